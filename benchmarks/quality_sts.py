"""Sentence embeddings per CPU-minute: our contrastive training vs sentence-transformers' unsupervised
SimCSE, and our from-scratch recipe, on the comparison corpus (``comparison.py``), same machine.

(a) From the same MLM-pretrained init (``sslpipe pretrain --config quality-mlm`` for
    ``--init-minutes``, or ``--init DIR``) and for the same ``--minutes`` each:
    * OURS: ``sslpipe pretrain --config sts-continue --set model.init_from=INIT ...`` (contrastive
      on sentences of the corpus, as a user runs it);
    * ST:   sentence-transformers 6, its documented unsupervised SimCSE: ``SentenceTransformer(INIT)``
      (mean pooling, max_seq_length 32), ``MultipleNegativesRankingLoss`` (scale 20, i.e. τ 0.05)
      on each sentence paired with itself, batch 128 (the SimCSE example's), the trainer's other
      defaults (AdamW lr 5e-5, linear decay, fp32 on CPU), stopped after the same minutes.
    Both get the same sentences (the corpus split into sentences of 4–32 tokens).
(b) From scratch, ``--scratch-minutes`` (15) in all: ``sslpipe pretrain --config sts``.

Judged by STS-B dev and SICK dev Spearman (``ssl_core.evaluation``, the same code for every model),
each model twice: ``raw`` (the pooled embedding; a whitening map the run exported is left out) and
``white`` (a whitening map fitted the same way for every model: ``ssl_core.whitening`` on 10,000
sentences of the corpus, seed 0; what ``embedding.whiten`` exports).

    python benchmarks/quality_sts.py [--minutes 5] [--init-minutes 10] [--scratch-minutes 15]
                                     [--init DIR] [--skip-scratch] [--skip-continue]

Ends with ``RATIO quality_sts <ours ÷ sentence-transformers, STS-B dev, raw>``,
``RATIO quality_sts_whitened <the same, both whitened>`` and
``RATIO sts_from_scratch <STS-B dev x 100 of the sts recipe as it exports (whitened)>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import comparison as C  # noqa: E402
from ssl_core.perf import cpu_line  # noqa: E402


def sentences(files: list[Path], tokenizer_dir: Path, limit: int = 200_000) -> list[str]:
    """The corpus's sentences of 4-32 tokens (what both sides train on)."""
    from ssl_core.text import iter_documents, resolve_corpus, split_sentences
    from ssl_core.tokenizer import load_fast

    tok = load_fast(tokenizer_dir)
    out = []
    for shard in resolve_corpus(",".join(map(str, files))):
        for doc in iter_documents(shard, min_chars=20):
            for s in split_sentences(doc["text"]):
                if 4 <= len(tok.encode(s, add_special_tokens=False).ids) <= 32:
                    out.append(s)
    import random
    random.Random(0).shuffle(out)
    return out[:limit]


def st_simcse(init: Path, sents: list[str], out: Path, seconds: float) -> Path:
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(init), device="cpu")
    model.max_seq_length = 32
    clock, budget = C.time_budget(seconds)

    ds = Dataset.from_dict({"anchor": sents, "positive": sents})
    args = SentenceTransformerTrainingArguments(output_dir=str(out / "st"), per_device_train_batch_size=128,
                                                num_train_epochs=1, report_to=[], save_strategy="no",
                                                logging_strategy="no", use_cpu=True, disable_tqdm=True)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                               loss=MultipleNegativesRankingLoss(model), callbacks=[budget]).train()
    model.save(str(out / "st_model"))
    print(f"  ST: {clock.get('steps')} steps of 128 pairs in {time.perf_counter() - clock['t0']:.0f}s", flush=True)
    return out / "st_model"


def raw_and_white(model_dir: Path, corpus: str, out: Path) -> dict:
    """STS-B/SICK dev of ``model_dir`` without any Dense module (raw) and with a whitening map
    fitted on the corpus (white); keys ``stsb_spearman``, ``white_stsb_spearman``, ..."""
    import json
    import shutil

    from ssl_core.config import DataConfig
    from ssl_core.export import DENSE_DIR
    from ssl_core.whitening import whiten_model_dir

    res = {}
    for kind in ("raw", "white"):
        d = out / kind
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(model_dir, d, ignore=shutil.ignore_patterns(DENSE_DIR))
        mods = json.loads((d / "modules.json").read_text())
        (d / "modules.json").write_text(json.dumps([m for m in mods if not m["type"].endswith("Dense")]))
        if kind == "white":
            whiten_model_dir(d, DataConfig(corpus=corpus), 10000, seed=0)
        r = C.suite(d, ("stsb", "sick"))
        res.update(r if kind == "raw" else {f"white_{k}": v for k, v in r.items()})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="(a): contrastive minutes of each side")
    ap.add_argument("--init-minutes", type=float, default=10.0, help="(a): MLM minutes of the shared init")
    ap.add_argument("--init", default=None, help="(a): an existing MLM-pretrained model directory")
    ap.add_argument("--scratch-minutes", type=float, default=15.0)
    ap.add_argument("--skip-scratch", action="store_true")
    ap.add_argument("--skip-continue", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for our runs")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    extra = [x for s in args.set for x in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="sslbench_qsts_") as d:
        tmp = Path(d)
        files, _ = C.build_corpus(tmp / "corpus")
        tok = C.shared_tokenizer(files, tmp / "tok")
        corpus = ",".join(map(str, files))
        results = {}
        if not args.skip_continue:
            init = Path(args.init) if args.init else C.run_sslpipe(
                ["pretrain", "--config", "quality-mlm", "--set", f"data.corpus={corpus}", "--set", f"tokenizer.path={tok}",
                 "--set", f"train.max_minutes={args.init_minutes}", "--set", "eval.tasks=",
                 "--set", "model.dropout=0.1",          # saved in its config: both sides' SimCSE dropout
                 "--set", "mlflow.run_name=init"], tmp, tmp / "init.log")[0]
            results["init"] = raw_and_white(init, corpus, tmp / "eval_init")
            ours, m = C.run_sslpipe(
                ["pretrain", "--config", "sts-continue", "--set", f"data.corpus={corpus}",
                 "--set", f"model.init_from={init}", "--set", f"train.max_minutes={args.minutes}",
                 "--set", "eval.tasks=", "--set", "mlflow.run_name=ours", *extra], tmp, tmp / "ours.log")
            results["ours"] = raw_and_white(ours, corpus, tmp / "eval_ours")
            st = st_simcse(init, sentences(files, tok), tmp, args.minutes * 60)
            results["st"] = raw_and_white(st, corpus, tmp / "eval_st")
        if not args.skip_scratch:
            scratch, m = C.run_sslpipe(
                ["pretrain", "--config", "sts", "--set", f"data.corpus={corpus}", "--set", f"tokenizer.path={tok}",
                 "--set", f"train.max_minutes={args.scratch_minutes}", "--set", "eval.tasks=",
                 "--set", "mlflow.run_name=scratch", *extra], tmp, tmp / "scratch.log")
            results["scratch"] = raw_and_white(scratch, corpus, tmp / "eval_scratch")
            exported = C.suite(scratch, ("stsb", "sick"))         # as the recipe exports it
            results["scratch"].update({f"exported_{k}": v for k, v in exported.items()})
    for name, r in results.items():
        print(f"{name:8s} raw STS-B dev {r['stsb_spearman']:.4f}  SICK dev {r['sick_spearman']:.4f} | "
              f"white STS-B dev {r['white_stsb_spearman']:.4f}  SICK dev {r['white_sick_spearman']:.4f}")
    if "scratch" in results:
        r = results["scratch"]
        print(f"scratch  as exported by the sts recipe: STS-B dev {r['exported_stsb_spearman']:.4f}  "
              f"SICK dev {r['exported_sick_spearman']:.4f}")
    if "st" in results:
        o, s = results["ours"], results["st"]
        print(f"RATIO quality_sts {o['stsb_spearman'] / s['stsb_spearman']:.3f}")
        print(f"RATIO quality_sts_whitened {o['white_stsb_spearman'] / s['white_stsb_spearman']:.3f}")
    if "scratch" in results:
        print(f"RATIO sts_from_scratch {100 * results['scratch']['exported_stsb_spearman']:.1f}")


if __name__ == "__main__":
    main()
