"""Ray Data stage: corpus → documents → sentences → tokens → examples for every enabled objective.

Thin Ray glue around ``ssl_core``:

    read (one task per shard and epoch: ``document_batches``, groups of data.batch_rows
         documents, every record counted)
      → examples (actor pool: one tokenizer + ExampleBuilder per actor; each group built on its
        own with ``build_split``: NSP pairs, contrastive views, packing, word starts)
      → train rows; validation rows are also MLM-masked there, at the fixed eval ratio and seed.

Groups are built one by one even when Ray Data coalesces several into one block, so the rows are
the ones ``ssl_core.training.local`` builds without Ray.

The training stream is one pass over ``data.max_epochs`` epochs laid end to end, each row tagged
with its epoch: NSP partners, views and (in the worker) MLM masks are redrawn every epoch, and
workers never wait on an epoch barrier. Counts go to a small stats actor; ``report()`` renders
them (read = used + skipped).

    train_ds, val_ds, stats = build_datasets(cfg, shards, tokenizer_dir)
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import ray

from ssl_core.config import Config
from ssl_core.examples import ExampleBuilder
from ssl_core.text import Shard, document_batches, per_shard_limit


@ray.remote(num_cpus=0)
class Stats:
    """Sums the counters that read tasks and example actors send."""

    def __init__(self):
        self.c: Counter = Counter()

    def add(self, counts: dict) -> None:
        self.c.update({k: v for k, v in counts.items() if v})

    def get(self) -> dict:
        return dict(self.c)


def _read(batch: dict, *, cfg: Config, per_shard_limit: int, stats) -> "iter":
    """Generator UDF: each input row is (shard, epoch) → groups of documents."""
    for i, (kind, path, field, epoch) in enumerate(zip(batch["kind"], batch["path"],
                                                       batch["text_field"], batch["epoch"])):
        shard = Shard(str(kind), str(path), str(field))
        c: Counter = Counter()
        for g, docs in enumerate(document_batches(shard, cfg.data, c, per_shard_limit)):
            n = len(docs["id"])
            yield {"id": np.array(docs["id"], dtype=object), "text": np.array(docs["text"], dtype=object),
                   "val": np.array(docs["val"], dtype=bool), "epoch": np.full(n, int(epoch), np.int32),
                   "group": np.full(n, f"{path}:{epoch}:{g}", dtype=object)}
        if int(epoch) == 0 and stats is not None:       # the corpus is counted once, not per epoch
            stats.add.remote(c)


class BuildExamples:
    """Actor: one tokenizer and example builder per actor (NSP keeps its partner buffer here)."""

    def __init__(self, cfg: Config, tokenizer_dir: str, split: str, stats=None):
        self.b = ExampleBuilder(cfg, tokenizer_dir)
        self.split = split
        self.stats = stats

    def __call__(self, batch: dict) -> dict:
        """Documents of one or more groups (blocks may be coalesced) → rows, group by group."""
        parts = []
        for group in dict.fromkeys(batch["group"]):           # in order of arrival
            sel = batch["group"] == group
            docs = {k: batch[k][sel] for k in ("id", "text", "val")}
            epoch = int(batch["epoch"][sel][0])
            rows, c = self.b.build_split(docs, self.split, epoch)
            if self.stats is not None and epoch == 0:
                self.stats.add.remote({f"{self.split}_{k}": v for k, v in c.items()})
            parts.append(rows)
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def quiet_data_context() -> None:
    """Progress is ours to print (steps, loss, tok/s); Ray Data's bars would flood a log file."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def documents(cfg: Config, shards: list[Shard], epochs: int, stats=None) -> "ray.data.Dataset":
    items = [dict(dataclasses.asdict(s), epoch=e) for e in range(epochs) for s in shards]
    limit = per_shard_limit(cfg.data.max_documents, len(shards))
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 10_000)))
    return ds.map_batches(_read, batch_size=1,
                          fn_kwargs=dict(cfg=cfg, per_shard_limit=limit, stats=stats))


def examples(cfg: Config, shards: list[Shard], tokenizer_dir: str, split: str, epochs: int,
             stats=None) -> "ray.data.Dataset":
    return documents(cfg, shards, epochs, stats if split == "train" else None).map_batches(
        BuildExamples, batch_size=None,
        fn_constructor_kwargs=dict(cfg=cfg, tokenizer_dir=str(tokenizer_dir), split=split, stats=stats),
        compute=ray.data.ActorPoolStrategy(size=cfg.data.tokenize_actors))


def build_datasets(cfg: Config, shards: list[Shard], tokenizer_dir: str, epochs: int | None = None):
    """(train, val, stats actor). Train rows: input_ids, word_start, num_tokens, epoch (+
    token_type_ids, nsp_label with NSP; view_a, view_b with contrastive). Val rows: the same for
    epoch 0 with input_ids masked at 15% (fixed seed) and labels."""
    quiet_data_context()
    stats = Stats.remote()
    train = examples(cfg, shards, tokenizer_dir, "train", epochs or cfg.data.max_epochs, stats)
    val = examples(cfg, shards, tokenizer_dir, "val", 1, stats)
    return train, val, stats


# ---------------------------------------------------------------- the report

def report(c: dict, max_seq_len: int) -> str:
    """The data report: every record accounted for (read = used + skipped), per-kind skips."""
    skipped = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("skipped:")}
    files_skipped = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("files_skipped:")}
    read, used = c.get("records_read", 0), c.get("records_used", 0)
    tr = {k[len("train_"):]: v for k, v in c.items() if k.startswith("train_")}
    va = {k[len("val_"):]: v for k, v in c.items() if k.startswith("val_")}
    lines = [
        "data report",
        f"  files       {c.get('files', 0):,} read, {sum(files_skipped.values()):,} skipped"
        + "".join(f"; {k} {v:,}" for k, v in sorted(files_skipped.items()))
        + (f"; {c['files_without_documents']:,} without any document" if c.get("files_without_documents") else ""),
        f"  records     {read:,} read = {used:,} used + {sum(skipped.values()):,} skipped"
        + ("  (OK)" if read == used + sum(skipped.values()) else "  (MISMATCH)"),
    ]
    for k, v in sorted(skipped.items()):
        lines.append(f"    skipped   {k}: {v:,}")
    lines.append(f"  documents   {c.get('documents', 0):,} (train {tr.get('documents', 0):,}, "
                 f"validation {va.get('documents', 0):,}); long documents split: "
                 f"{c.get('long_documents_split', 0):,}; lines with invalid UTF-8 replaced: "
                 f"{c.get('invalid_utf8_lines', 0):,}")
    for name, part in (("train", tr), ("validation", va)):
        if not part:
            continue
        ex = ", ".join(f"{k[len('examples_'):]} {v:,}" for k, v in sorted(part.items()) if k.startswith("examples_"))
        eff = part.get("real_tokens", 0) / max(1, part.get("slots", 0))
        nsp = ""
        if part.get("nsp_is_next") or part.get("nsp_not_next"):
            tot = part.get("nsp_is_next", 0) + part.get("nsp_not_next", 0)
            nsp = f"; NSP NotNext share {part.get('nsp_not_next', 0) / max(1, tot):.3f}"
            if part.get("nsp_unlabeled"):
                nsp += (f", {part['nsp_unlabeled']:,} one-sentence chunks unlabeled (MLM/contrastive "
                        "only; IsNext is never invented)")
        lines.append(f"  {name:<11} sentences {part.get('sentences', 0):,}, tokens {part.get('tokens', 0):,}, "
                     f"rows {part.get('rows', 0):,}; examples: {ex or 'none'}{nsp}")
        lines.append(f"  {'':<11} packing efficiency {eff:.3f} (real tokens / slots of {max_seq_len})")
    return "\n".join(lines)
