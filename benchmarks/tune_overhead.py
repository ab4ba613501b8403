"""What a search costs on top of its trainings: ``sslpipe tune`` with N trials, one at a time and
no early stopping, against the same N trainings run alone with ``sslpipe pretrain``.

1. ``sslpipe tune --config tune-tiny`` (or ``--config``), ASHA disabled (grace period past the
   last evaluation), ``max_concurrent_trials=1``, its own local Ray and a SQLite MLflow store in a
   temporary directory: wall time of the whole command (tokenizer, data stage, every trial, the
   table, plots and registration).
2. For each trial of that search, its mask ratio and temperature given to ``sslpipe pretrain`` with
   the same config (``eval.every`` = the search's ``tune.eval_every``, so both evaluate as often):
   wall time of each whole command, summed.

    python benchmarks/tune_overhead.py [--config tune-tiny] [--trials 4] [--set train.max_steps=60]

Ends with ``RATIO tune_overhead <search wall ÷ sum of the solo walls>`` (target ≤ 1.10).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(args: list[str], cwd: Path, env: dict) -> float:
    exe = Path(sys.executable).parent / "sslpipe"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"sslpipe {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tune-tiny")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--keep", default=None, help="copy the search's table and plots into this directory")
    a = p.parse_args()
    from pipelines.configs import load_config
    from ssl_core.perf import cpu_line
    print(cpu_line(), flush=True)
    cfg = load_config(a.config, a.overrides)
    evals = cfg.train.max_steps // cfg.tune.eval_every + 1
    sets = [x for o in a.overrides for x in ("--set", o)]
    with tempfile.TemporaryDirectory(prefix="tune-overhead-") as tmp:
        wd = Path(tmp)
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{wd / 'mlflow.db'}",
                   RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
        env.pop("RAY_ADDRESS", None)
        search = run(["tune", "--config", a.config, *sets, "--set", f"tune.num_samples={a.trials}",
                      "--set", "tune.max_concurrent_trials=1", "--set", f"tune.grace_period={evals + 1}",
                      "--set", "mlflow.run_name=search"], wd, env)
        sdir = wd / "outputs" / "search"
        rows = json.loads((sdir / "trials.json").read_text())
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            for f in [sdir / "trials.txt", *sdir.glob("*.png")]:
                shutil.copy(f, Path(a.keep) / f.name)
        assert len(rows) == a.trials and all(r["status"] == "done" for r in rows), rows
        solo = []
        for i, r in enumerate(rows):
            knobs = [x for k in ("masking.ratio", "contrastive.temperature") if r.get(k) is not None
                     for x in ("--set", f"{k}={r[k]}")]
            solo.append(run(["pretrain", "--config", a.config, *sets, *knobs, "--set", f"eval.every={cfg.tune.eval_every}",
                             "--set", f"mlflow.run_name=solo{i}"], wd, env))
            print(f"solo {i}: masking.ratio {r.get('masking.ratio'):.3f}, {solo[-1]:.1f} s", flush=True)
    print(f"config {a.config}, {a.trials} trials of {cfg.train.max_steps} steps, "
          f"one at a time, no early stopping")
    print(f"search (sslpipe tune): {search:.1f} s; solo (sslpipe pretrain x{a.trials}): {sum(solo):.1f} s "
          f"({', '.join(f'{s:.1f}' for s in solo)})")
    print(f"RATIO tune_overhead {search / sum(solo):.3f}")


if __name__ == "__main__":
    main()
