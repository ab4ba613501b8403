"""Ray Data stage: corpus → documents → tokenize + pack (actor pool) → MLM masking.

Thin Ray glue around ``ssl_core``: every transformation is a ssl_core function on a numpy batch.

    ds_train, ds_val = build_datasets(cfg, shards, tokenizer_dir)
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import ray

from ssl_core.config import Config
from ssl_core.masking import MlmMasker
from ssl_core.packing import pack_documents
from ssl_core.text import Shard, iter_documents, is_validation
from ssl_core.tokenizer import load_fast, special_ids


def _read_shards(batch: dict, *, batch_rows: int, min_chars: int, val_fraction: float):
    """Generator UDF: one input row per shard → streamed batches of documents."""
    for kind, path, field in zip(batch["kind"], batch["path"], batch["text_field"]):
        shard = Shard(str(kind), str(path), str(field))
        ids, texts, val = [], [], []
        for doc in iter_documents(shard, Counter(), min_chars=min_chars):
            ids.append(doc["id"])
            texts.append(doc["text"])
            val.append(is_validation(doc["id"], val_fraction))
            if len(ids) >= batch_rows:
                yield {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object),
                       "val": np.array(val)}
                ids, texts, val = [], [], []
        if ids:
            yield {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object),
                   "val": np.array(val)}


class TokenizePack:
    """Actor: one fast tokenizer per actor; documents → packed (N, T) int32 sequences."""

    def __init__(self, tokenizer_dir: str, max_seq_len: int):
        self.tok = load_fast(tokenizer_dir)
        self.sp = special_ids(self.tok)
        self.max_seq_len = max_seq_len

    def __call__(self, batch: dict) -> dict:
        enc = self.tok.encode_batch_fast(list(batch["text"]), add_special_tokens=False)
        docs = [np.asarray(e.ids, dtype=np.int32) for e in enc]
        ids, n_real = pack_documents(docs, self.max_seq_len, cls_id=self.sp["cls"],
                                     sep_id=self.sp["sep"], pad_id=self.sp["pad"])
        return {"input_ids": ids, "num_tokens": n_real}


def _split(batch: dict, *, val: bool) -> dict:
    keep = batch["val"] == val
    return {"id": batch["id"][keep], "text": batch["text"][keep]}


def _mask(batch: dict, *, masker: MlmMasker, seed: int, epoch: int) -> dict:
    masked, labels = masker.keyed(batch["input_ids"], seed=seed, epoch=epoch)
    return {"input_ids": masked, "labels": labels, "num_tokens": batch["num_tokens"]}


def make_masker(cfg: Config, tokenizer_dir: str) -> MlmMasker:
    tok = load_fast(tokenizer_dir)
    sp = special_ids(tok)
    return MlmMasker(vocab_size=tok.get_vocab_size(), mask_id=sp["mask"],
                     special_ids=tuple(sorted(set(sp.values()))), ratio=cfg.masking.ratio,
                     mask_prob=cfg.masking.mask_prob, random_prob=cfg.masking.random_prob)


def quiet_data_context() -> None:
    """Progress is ours to print (steps, loss, tok/s); Ray Data's bars would flood a log file."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def documents(cfg: Config, shards: list[Shard]) -> "ray.data.Dataset":
    items = [dataclasses.asdict(s) for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(_read_shards, batch_size=1, fn_kwargs=dict(
        batch_rows=cfg.data.batch_rows, min_chars=cfg.data.min_chars,
        val_fraction=cfg.data.val_fraction))
    if cfg.data.max_documents:
        ds = ds.limit(cfg.data.max_documents)
    return ds


def build_datasets(cfg: Config, shards: list[Shard], tokenizer_dir: str):
    """(train, val): train rows are masked {input_ids, labels, num_tokens}; val rows are unmasked
    {input_ids, num_tokens} (evaluation masks them at a fixed 15% with a fixed seed)."""
    quiet_data_context()
    docs = documents(cfg, shards)
    tok_kw = dict(fn_constructor_kwargs=dict(tokenizer_dir=str(tokenizer_dir),
                                             max_seq_len=cfg.data.max_seq_len),
                  batch_size=cfg.data.batch_rows,
                  compute=ray.data.ActorPoolStrategy(size=cfg.data.tokenize_actors))
    train = (docs.map_batches(_split, fn_kwargs={"val": False})
             .map_batches(TokenizePack, **tok_kw)
             .map_batches(_mask, fn_kwargs=dict(masker=make_masker(cfg, tokenizer_dir),
                                                seed=cfg.masking.seed, epoch=0)))
    val = docs.map_batches(_split, fn_kwargs={"val": True}).map_batches(TokenizePack, **tok_kw)
    return train, val
