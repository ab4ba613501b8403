"""Who gets the cores during the default job: the data stage vs the trainers, and the job's
training speed vs the same loop alone.

1. ``sslpipe pretrain`` (config ``default``, or ``--config``; ``--set`` overrides passed through) as a
   user runs it: its own local Ray, a SQLite MLflow store in a temporary directory. While it runs,
   every process of its session is sampled from /proc every 0.5 s (cumulative user+system CPU
   time, the last value seen per PID), and classed by its Ray name: the data stage (Ray Data read
   tasks and tokenize actors: ``ray::MapWorker``, ``ray::ReadTask``, ``ray::MapBatches``, ...),
   the Train workers (``ray::RayTrainWorker``), everything else (driver, raylet, GCS, dashboard,
   Train controller, ...).
2. The same model, config and global batch in one process without Ray (``run_local``,
   ``train.num_workers=1``, ``train.cpus_per_worker`` = the job's total, ``train.batch_size`` = the
   job's global batch), for ``--local-steps`` steps: its steady tokens/s.

The local loop runs before and after every job (``--repeats`` jobs, default 2: loop, job, loop,
job, loop), and each job is compared with the mean of the two loops around it: the shared hosts
here change speed over minutes (the same job's GEMM peak read 643 and 905 GFLOP/s in two runs ten
minutes apart, and one job ÷ one loop run after it gave 0.82 and then 0.72), so a job is only
compared with loops of the same minutes. The data share adds up the CPU time of all the jobs.

    python benchmarks/data_cpu_share.py [--config default] [--set train.max_steps=200] [--local-steps 60] [--repeats 2]

Ends with ``RATIO data_cpu_share <data-stage CPU s ÷ Train-worker CPU s>`` and
``RATIO job_vs_loop <median over the jobs of: the job's median tokens/s ÷ the mean of the
local loop's medians just before and just after it>``.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HZ = os.sysconf("SC_CLK_TCK")
DATA = re.compile(r"ray::(MapWorker|ReadTask|MapBatches|Map\(|Read|_read|Tokenize|split|SplitCoordinator)")


def session_cpu(sid: int) -> dict[int, tuple[str, float]]:
    """PID -> (name, CPU seconds) for the processes of session ``sid``."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        if int(f[3]) == sid:
            out[int(d)] = (cmd.strip() or "comm:" + stat[stat.index("(") + 1:stat.rindex(")")],
                           (int(f[11]) + int(f[12])) / HZ)
    return out


def classify(name: str) -> str:
    if "RayTrainWorker" in name:
        return "train"
    if DATA.search(name):
        return "data"
    return "other"


def run_job(args, tmp: Path) -> tuple[dict, str]:
    exe = Path(sys.executable).parent / "sslpipe"
    cmd = [str(exe), "pretrain", "--config", args.config, "--set", "eval.tasks="]
    for s in args.set:
        cmd += ["--set", s]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", RAY_ADDRESS="",
               RAY_TMPDIR=str(tmp / "ray"))
    (tmp / "ray").mkdir()
    log = open(tmp / "job.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, tuple[str, float]] = {}
    t0 = time.time()
    while proc.poll() is None:
        for pid, (name, cpu) in session_cpu(proc.pid).items():
            if pid in seen:       # an exiting process's cmdline reads empty: keep the last one seen
                name = seen[pid][0] if name.startswith("comm:") else name
                cpu = max(cpu, seen[pid][1])
            seen[pid] = (name, cpu)
        time.sleep(0.5)
    log.close()
    text = (tmp / "job.log").read_text()
    if proc.returncode != 0:
        sys.exit(f"the job failed (exit {proc.returncode}):\n{text[-3000:]}")
    by = {"data": 0.0, "train": 0.0, "other": 0.0}
    top: dict[str, float] = {}
    for name, cpu in seen.values():
        by[classify(name)] += cpu
        short = name.split()[0][:60]
        top[short] = top.get(short, 0.0) + cpu
    print(f"job wall {time.time() - t0:.0f}s; CPU seconds: data stage {by['data']:.1f}, Train workers "
          f"{by['train']:.1f}, other {by['other']:.1f}")
    for name, cpu in sorted(top.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {cpu:7.1f}  {name}")
    return by, text


def job_tokens_per_s(text: str) -> list[float]:
    """tok/s of the job's progress lines, the first window (warm-up) dropped."""
    v = [float(m.group(1).replace(",", "")) for m in re.finditer(r"\| ([\d,]+) tok/s \|", text)]
    return v[1:] or v


def local_config(args):
    from pipelines.configs import load_config
    base = load_config(args.config, args.set)
    return load_config(args.config, args.set + [
        "train.num_workers=1", f"train.cpus_per_worker={base.train.num_workers * base.train.cpus_per_worker}",
        f"train.batch_size={base.train.num_workers * base.train.batch_size}",
        f"train.max_steps={args.local_steps}", "train.checkpoint_every=0", "eval.tasks="])


def local_tokenizer(cfg, tmp: Path) -> str:
    from ssl_core.text import resolve_corpus, sample_documents
    from ssl_core.tokenizer import train_wordpiece
    texts = sample_documents(resolve_corpus(cfg.data.corpus), cfg.tokenizer.sample_documents, cfg.data.min_chars)
    return str(train_wordpiece(texts, tmp / "tok", cfg.tokenizer.vocab_size, model_max_length=cfg.data.max_seq_len))


def local_tokens_per_s(cfg, tok: str) -> list[float]:
    from ssl_core.training import run_local
    _, sess = run_local(cfg, tok, val_batches=[], device="cpu")
    v = [m["tokens_per_s"] for m in sess.logged if "tokens_per_s" in m]
    return v[1:] or v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--local-steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2,
                    help="jobs, each between two runs of the local loop (default 2)")
    args = ap.parse_args()
    from ssl_core.perf import cpu_line
    print(cpu_line(), flush=True)
    by = {"data": 0.0, "train": 0.0, "other": 0.0}
    ratios, jobs, loops, precision = [], [], [], None
    with tempfile.TemporaryDirectory(prefix="sslbench_share_") as d:
        tmp = Path(d)
        cfg = local_config(args)
        tok = local_tokenizer(cfg, tmp)
        loops.append(statistics.median(local_tokens_per_s(cfg, tok)))
        for r in range(args.repeats):
            run_dir = tmp / f"job{r}"
            run_dir.mkdir()
            job_by, text = run_job(args, run_dir)
            for k in by:
                by[k] += job_by[k]
            precision = precision or re.search(r"precision (\w+) on cpu", text)
            jobs.append(statistics.median(job_tokens_per_s(text)))
            loops.append(statistics.median(local_tokens_per_s(cfg, tok)))
            ratios.append(jobs[-1] / ((loops[-2] + loops[-1]) / 2))
            print(f"repeat {r + 1}: loop {loops[-2]:,.0f} | job {jobs[-1]:,.0f} | loop {loops[-1]:,.0f} tok/s "
                  f"(medians over windows) -> job / mean of the loops around it {ratios[-1]:.3f}", flush=True)
    print(f"precision {precision.group(1) if precision else '?'}; job tok/s {', '.join(f'{j:,.0f}' for j in jobs)}; "
          f"the same loop alone {', '.join(f'{x:,.0f}' for x in loops)}")
    if by["train"] <= 0:
        sys.exit("no Train worker process (ray::RayTrainWorker) was seen in the job's session: no ratio")
    print(f"RATIO data_cpu_share {by['data'] / by['train']:.3f}")
    print(f"RATIO job_vs_loop {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
