"""Ray Data stage, once per run: corpus → documents → sentences → tokens, materialized.

    corpus = tokenized_corpus(cfg, shards, tokenizer_dir)
    corpus.train, corpus.val          # MaterializedDatasets of tokenized documents
    corpus.parts(n)                   # the training documents in n parts, one per Train worker
    corpus.counts                     # read/skip counts, tokens, and epoch-0 rows/pairs per split

Thin Ray glue around ``ssl_core``:

    read (one task per shard: ``document_batches``, groups of data.batch_rows documents, every
         record counted)
      → tokenize (actor pool: one tokenizer + ExampleBuilder per actor; sentences split and
        tokenized once; the rows and view pairs each group gives at epoch 0 are counted for the
        report, not kept)
      → materialized in the object store, training and validation documents apart.

Everything that changes per epoch (packing, NSP partners, views, masks) is built by the Train
workers from these documents as they consume them (``ssl_core.training.data``): no Ray Data work
runs during training, and none runs ahead of it.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import ray

from ssl_core.config import Config, parse_amounts
from ssl_core.examples import ExampleBuilder
from ssl_core.text import Shard, document_batches, per_shard_limit
from ssl_core.tokenizer import TokenizerFiles


@ray.remote(num_cpus=0)
class Stats:
    """Sums the counters that read tasks and tokenize actors send (synchronously, so that
    everything is counted once the data is materialized)."""

    def __init__(self):
        self.c: Counter = Counter()

    def add(self, counts: dict) -> None:
        self.c.update({k: v for k, v in counts.items() if v})

    def get(self) -> dict:
        return dict(self.c)


def _read(batch: dict, *, cfg: Config, per_shard_limit: int, stats) -> "iter":
    """Generator UDF: each input row is a shard → groups of documents."""
    for kind, path, field in zip(batch["kind"], batch["path"], batch["text_field"]):
        shard = Shard(str(kind), str(path), str(field))
        c: Counter = Counter()
        for g, docs in enumerate(document_batches(shard, cfg.data, c, per_shard_limit)):
            n = len(docs["id"])
            yield {"id": _objects(docs["id"]), "text": _objects(docs["text"]),
                   "val": np.array(docs["val"], dtype=bool), "group": np.full(n, f"{path}:{g}", dtype=object)}
        if stats is not None:
            ray.get(stats.add.remote(c))         # before the task ends: counted when the data is


def _objects(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


class Tokenize:
    """Actor: documents → tokenized documents, group by group and split by split; counts what
    each group gives at epoch 0 (rows, view pairs, NSP labels, packing) for the data report."""

    def __init__(self, cfg: Config, tokenizer_dir: str, stats=None):
        self.b = ExampleBuilder(cfg, tokenizer_dir)
        self.stats = stats

    def __call__(self, batch: dict) -> dict:
        parts, c = [], Counter()
        for group in dict.fromkeys(batch["group"]):           # in order of arrival
            for split, want in (("train", False), ("val", True)):
                sel = (batch["group"] == group) & (batch["val"] == want)
                if not sel.any():
                    continue
                docs, tc = self.b.tokenize(list(batch["id"][sel]), list(batch["text"][sel]))
                if self.b.makes_rows:
                    tc += self.b.rows(docs, 0)[1]
                if self.b.chain_a is not None:
                    tc += self.b.views(docs, 0)[1]
                c.update({f"{split}_{k}": v for k, v in tc.items()})
                n = len(docs["id"])
                parts.append(dict(docs, val=np.full(n, want), group=np.full(n, group, dtype=object)))
        if self.stats is not None:
            ray.get(self.stats.add.remote(c))
        if not parts:
            return {"id": _objects([]), "tokens": _objects([]), "sent_lens": _objects([]),
                    "val": np.zeros(0, dtype=bool), "group": _objects([])}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _select(batch: dict, *, val: bool) -> dict:
    keep = batch["val"] == val
    return {k: v[keep] for k, v in batch.items() if k != "val"}


def quiet_data_context() -> None:
    """Progress is ours to print (steps, loss, tok/s); Ray Data's bars would flood a log file."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)     # "execution finished" lines
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)   # "bars disabled"


def documents(cfg: Config, shards: list[Shard], stats=None) -> "ray.data.Dataset":
    """One read task per shard → groups of documents (id, text, val, group)."""
    items = [dataclasses.asdict(s) for s in shards]
    limit = per_shard_limit(cfg.data.max_documents, len(shards))
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 10_000)))
    return ds.map_batches(_read, batch_size=1, fn_kwargs=dict(cfg=cfg, per_shard_limit=limit, stats=stats),
                          **data_resources(cfg))


@dataclasses.dataclass
class TokenizedCorpus:
    train: "ray.data.Dataset"          # tokenized training documents: id, tokens, sent_lens, group
    val: "ray.data.Dataset"            # ... held-out ones
    counts: dict                       # the data report's counts

    def parts(self, n: int) -> list:
        """The training documents in ``n`` parts of equal document counts (±1), none dropped."""
        total = self.train.count()
        if n == 1:
            return [self.train]
        return self.train.split_at_indices([total * i // n for i in range(1, n)])


def data_resources(cfg: Config) -> dict:
    """``data.resources`` as Ray remote args of every data-stage task and actor."""
    extra = parse_amounts(cfg.data.resources, "data.resources")
    return {"resources": extra} if extra else {}


def carried(tokenizer_dir) -> TokenizerFiles:
    """The tokenizer by value: actors and workers on other nodes cannot read the driver's disk."""
    return tokenizer_dir if isinstance(tokenizer_dir, TokenizerFiles) else TokenizerFiles.from_dir(tokenizer_dir)


def tokenized_corpus(cfg: Config, shards: list[Shard], tokenizer_dir) -> TokenizedCorpus:
    """Read and tokenize the corpus once, materialized; counts for the data report.
    ``tokenizer_dir``: a directory on this machine, or its ``TokenizerFiles``."""
    quiet_data_context()
    stats = Stats.remote()
    try:
        docs = documents(cfg, shards, stats).map_batches(
            Tokenize, batch_size=None, fn_constructor_kwargs=dict(cfg=cfg, tokenizer_dir=carried(tokenizer_dir),
                                                                  stats=stats),
            compute=ray.data.ActorPoolStrategy(size=cfg.data.tokenize_actors), **data_resources(cfg)).materialize()
        train = docs.map_batches(_select, fn_kwargs={"val": False}, batch_size=None, **data_resources(cfg)).materialize()
        val = docs.map_batches(_select, fn_kwargs={"val": True}, batch_size=None, **data_resources(cfg)).materialize()
        counts = ray.get(stats.get.remote())
    finally:
        ray.kill(stats)
    return TokenizedCorpus(train, val, counts)


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
