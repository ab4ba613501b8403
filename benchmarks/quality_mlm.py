"""MLM quality per CPU-minute: ``sslpipe pretrain --config quality-mlm`` vs the Hugging Face
``run_mlm.py`` recipe, the same minutes of training each, on the same machine, one after the other.

Both train BERT-mini (4 layers, hidden 256, 4 heads, intermediate 1024, seq 128) from scratch on the
comparison corpus (``comparison.py``: ~11 MB, WikiText-2 minus a held-out slice, War and Peace,
Tiny Shakespeare, SST-2 train, AG News dev) with the same WordPiece 8k tokenizer (trained here once).

* OURS: ``sslpipe pretrain --config quality-mlm --set data.corpus=... --set tokenizer.path=...
        --set train.max_minutes=N`` as a user runs it (own local Ray, 2 DDP workers); whatever the
        recipe chooses (precision, mask ratio and schedule, LR schedule, batch, packing).
* HF:   ``run_mlm.py``: Trainer + DataCollatorForLanguageModeling at 15%, batch 32, lr 5e-4
        constant after 100 warmup steps, fp32, stopped after N minutes of training.

Judged by MLM accuracy at a fixed 15% token mask and seed on the held-out WikiText slice, scored
by the same code for both (``comparison.heldout_mlm``); also STS-B / SICK dev Spearman and SST-2 /
TREC probe accuracy (``ssl_core.evaluation``) for both.

    python benchmarks/quality_mlm.py [--minutes 10] [--config quality-mlm] [--set KEY=VALUE ...]

Ends with ``RATIO quality_mlm <ours − HF, accuracy points>`` and ``RATIO e2e_tokens_vs_hf
<training tokens seen by ours ÷ by HF in the same minutes>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import comparison as C  # noqa: E402
from ssl_core.perf import cpu_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--config", default="quality-mlm")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for our side")
    ap.add_argument("--skip-hf", action="store_true", help="ours only (recipe search)")
    args = ap.parse_args()
    if not (C.DATA / "wikitext2").is_dir():
        sys.exit(f"{C.DATA} not found (the shared data folder is missing)")
    print(cpu_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="sslbench_qmlm_") as d:
        tmp = Path(d)
        files, heldout = C.build_corpus(tmp / "corpus")
        tok = C.shared_tokenizer(files, tmp / "tok")
        ours_dir, m = C.run_sslpipe(
            ["pretrain", "--config", args.config, "--set", f"data.corpus={','.join(map(str, files))}",
             "--set", f"tokenizer.path={tok}", "--set", f"train.max_minutes={args.minutes}",
             "--set", "eval.tasks=", *[x for s in args.set for x in ("--set", s)]], tmp, tmp / "ours.log")
        ours = {"tokens": m["tokens_seen"], "seconds": m["elapsed_s"], "steps": m["step"],
                **C.heldout_mlm(ours_dir, heldout, tok), **C.suite(ours_dir)}
        print(f"ours: {ours}", flush=True)
        if args.skip_hf:
            return
        hf_dir, h = C.hf_mlm(files, tok, tmp / "hf", args.minutes * 60)
        hf = {**h, **C.heldout_mlm(hf_dir, heldout, tok), **C.suite(hf_dir)}
        print(f"hf:   {hf}", flush=True)
    print(f"{'':6s} {'minutes':>7s} {'tokens':>11s} {'MLM acc@15%':>11s} {'MLM loss':>8s} "
          f"{'STS-B':>6s} {'SICK':>6s} {'SST-2':>6s} {'TREC':>6s}")
    for name, r in (("ours", ours), ("HF", hf)):
        print(f"{name:6s} {r['seconds'] / 60:7.1f} {r['tokens']:11,.0f} {r['mlm_accuracy']:11.4f} "
              f"{r['mlm_loss']:8.3f} {r['stsb_spearman']:6.3f} {r['sick_spearman']:6.3f} "
              f"{r['sst2_accuracy']:6.3f} {r['trec_accuracy']:6.3f}")
    print(f"RATIO quality_mlm {100 * (ours['mlm_accuracy'] - hf['mlm_accuracy']):.2f}")
    print(f"RATIO e2e_tokens_vs_hf {ours['tokens'] / hf['tokens']:.2f}")


if __name__ == "__main__":
    main()
