"""The evaluation suite: one exported model directory in, a dict of metrics and a table out.

    python -m ssl_core.evaluation MODEL_DIR [TASK,TASK,...]      # or: sslpipe evaluate MODEL

Tasks (every score is a fraction in [0, 1] or a Spearman ρ in [-1, 1], never x100):

* ``mlm``       MLM loss / accuracy at a FIXED 15% token mask (80/10/10, seed ``EVAL_SEED``) on the
                held-out documents of the corpus (``is_validation``), rows built by ``ExampleBuilder``
                exactly as ``pipelines/data.py`` builds validation rows. Needs an MLM head.
* ``nsp``       NSP accuracy on held-out pairs (unmasked), with the head in ``sslpipe_heads.safetensors``.
* ``stsb``, ``sick``  Spearman ρ between the cosine of pooled embeddings and the gold scores (dev).
* ``sst2``, ``trec``  linear probe (logistic regression on frozen pooled embeddings): SST-2 trained
                on a seeded sample of train, scored on dev; TREC-6 (train only here) on a seeded 80/20
                split of train.
* ``fillmask``  top-5 predictions for a few fixed sentences (a smoke check of the MLM head).

Pooling is read from the directory's sentence-transformers ``Pooling`` config (``mean`` when there is
none), the maximum length from ``sentence_bert_config.json`` / the tokenizer. Labelled data comes from
``data_root`` (default ``SSLPIPE_DATA_ROOT`` or ``../shared/data`` beside the checkout); a missing
file skips its task with a note, and no test split is ever read.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:                       # torch is imported where it is used: fast CLI errors
    import torch

import numpy as np

from ssl_core.config import EVAL_TASKS, Config, ConfigError
from ssl_core.export import CONFIG_FILE, HEADS_FILE
from ssl_core.masking import IGNORE_INDEX

TASKS = EVAL_TASKS
MAX_EVAL_ROWS = 512           # held-out rows for mlm / nsp (keeps the suite quick on CPU)
SST2_TRAIN_SAMPLE = 4000      # SST-2 train sentences the probe is fitted on
SAMPLE_SEED = 0               # every sample / split of the suite
TOP_K = 5

# (sentence with [MASK], answers that count as a hit in the top-k): a smoke check, not a benchmark.
FILLMASK_PROBES = (
    ("The capital of France is [MASK].", ("paris",)),
    ("The [MASK] of the function is returned.", ("value", "result")),
    ("He went to the [MASK] to buy some milk.", ("store", "shop", "market", "supermarket")),
    ("To be, or not to [MASK], that is the question.", ("be",)),
    ("The sun rises in the [MASK].", ("east", "morning")),
    ("She opened the [MASK] and walked into the room.", ("door",)),
)

# task -> [(result key, label in the table)]
_ROWS = {
    "mlm": [("mlm_loss", "loss (fixed 15% mask)"), ("mlm_accuracy", "accuracy (fixed 15% mask)")],
    "nsp": [("nsp_accuracy", "accuracy (held-out pairs)")],
    "stsb": [("stsb_spearman", "Spearman ρ (dev)")],
    "sick": [("sick_spearman", "Spearman ρ (dev)")],
    "sst2": [("sst2_accuracy", "probe accuracy (dev)")],
    "trec": [("trec_accuracy", "probe accuracy (20% of train)")],
    "fillmask": [("fillmask_top5_hit_rate", f"top-{TOP_K} hit rate")],
}


class EvaluationError(ValueError):
    """The model directory or the task list cannot be used as given."""


def default_data_root() -> Path:
    env = os.environ.get("SSLPIPE_DATA_ROOT") or os.environ.get("SSLPIPE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_tasks(tasks: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if tasks is None:
        return list(TASKS)
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        what = f"unknown task {bad[0]!r}" if bad else "no task given"
        raise EvaluationError(f"{what} (tasks: {', '.join(TASKS)})")
    return list(dict.fromkeys(names))


class _Skip(Exception):
    """A task that cannot run on this model / data: the message goes to the table."""


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A labelled TSV of ../shared/data: header row, tab-separated, NO quoting."""
    if not path.is_file():
        raise _Skip(f"data file {path} not found (set --data-root or SSLPIPE_DATA_ROOT)")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ---------------------------------------------------------------- the model

class LoadedModel:
    """Tokenizer + encoder (+ MLM head when the checkpoint has one) + pooling of a model directory."""

    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        if not d.is_dir():
            raise EvaluationError(f"model directory '{d}' does not exist")
        if not (d / "config.json").is_file():
            raise EvaluationError(f"'{d}' is not a Hugging Face model directory (no config.json)")
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

        self.dir = d
        self.config = AutoConfig.from_pretrained(d)
        self.tokenizer = AutoTokenizer.from_pretrained(d)
        archs = self.config.architectures or []
        self.mlm = None
        self.no_head_reason = (f"no MLM head in this checkpoint (architectures: {', '.join(archs) or '?'}); "
                               "a randomly initialised head would measure nothing")
        if any(a.endswith("ForMaskedLM") for a in archs):
            mlm, info = AutoModelForMaskedLM.from_pretrained(d, output_loading_info=True)
            if info.get("missing_keys"):
                self.no_head_reason = f"MLM head weights missing from the checkpoint: {sorted(info['missing_keys'])[:3]}"
            else:
                self.mlm = mlm.eval()
        self.encoder = (self.mlm.base_model if self.mlm is not None
                        else AutoModel.from_pretrained(d)).eval()
        self.pooling = self._pooling()
        self.max_len = self._max_len()

    def _pooling(self) -> str:
        mods = self.dir / "modules.json"
        if not mods.is_file():
            return "mean"
        for m in json.loads(mods.read_text(encoding="utf-8")):
            if str(m.get("type", "")).endswith("Pooling"):
                conf = json.loads((self.dir / m.get("path", "") / "config.json").read_text(encoding="utf-8"))
                mode = conf.get("pooling_mode")
                if mode is None:                               # sentence-transformers < 6
                    legacy = [k[len("pooling_mode_"):] for k, v in conf.items()
                              if k.startswith("pooling_mode_") and v is True]
                    mode = legacy[0] if len(legacy) == 1 else legacy
                mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
                if mode not in ("mean", "cls", "max"):
                    raise EvaluationError(f"pooling {mode!r} of {self.dir} is not supported (mean, cls, max)")
                return mode
        return "mean"

    def _max_len(self) -> int:
        sb = self.dir / "sentence_bert_config.json"
        n = json.loads(sb.read_text(encoding="utf-8")).get("max_seq_length") if sb.is_file() else None
        n = n or self.tokenizer.model_max_length
        pos = getattr(self.config, "max_position_embeddings", None)
        if pos:
            if self.config.model_type in ("roberta", "xlm-roberta", "camembert"):
                pos -= (self.config.pad_token_id or 0) + 1
            n = min(n, pos)
        return int(min(n, 512))

    def encode(self, sentences: list[str], batch_size: int = 64) -> np.ndarray:
        """Pooled embeddings (N, H), float32; batches sorted by length (less padding on CPU)."""
        import torch

        order = np.argsort([-len(s) for s in sentences], kind="stable")
        out = np.zeros((len(sentences), self.config.hidden_size), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            enc = self.tokenizer([sentences[j] for j in idx], padding=True, truncation=True,
                                 max_length=self.max_len, return_tensors="pt")
            with torch.no_grad():
                h = self.encoder(**enc).last_hidden_state             # (B, T, H)
            out[idx] = pool(h, enc["attention_mask"], self.pooling).float().numpy()
        return out


def pool(hidden: "torch.Tensor", attention_mask: "torch.Tensor", mode: str) -> "torch.Tensor":
    """(B, T, H), (B, T) -> (B, H): mean over real tokens, the [CLS] (first) state (as trained:
    ``ssl_core.objectives.contrastive.pool``), or max."""
    import torch
    from ssl_core.objectives.contrastive import pool as trained_pool

    if mode == "max":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    return trained_pool(hidden, attention_mask, mode)


# ---------------------------------------------------------------- held-out rows (mlm, nsp)

def load_train_config(model_dir: Path) -> tuple[Config, str]:
    """The training config saved beside the model, else the defaults (and which one it was)."""
    from ssl_core.config import _build

    p = model_dir / CONFIG_FILE
    if not p.is_file():
        return Config(), "default config (no sslpipe_config.json)"
    try:
        return _build(Config, json.loads(p.read_text(encoding="utf-8"))).validate(), CONFIG_FILE
    except ConfigError as e:
        raise _Skip(f"{p} does not match this version's config ({e})") from None


def heldout_rows(cfg: Config, tokenizer_dir: Path, max_rows: int) -> tuple[dict, Any, str]:
    """Rows of the held-out documents (``is_validation``), built as the data pipeline builds them,
    reading at most the documents the pipeline reads (``data.max_documents``), up to ``max_rows``."""
    from ssl_core.examples import ExampleBuilder
    from ssl_core.text import CorpusError, is_validation, iter_documents, resolve_corpus

    d = cfg.data
    b = ExampleBuilder(cfg, str(tokenizer_dir))
    b.tok.no_padding()
    b.tok.no_truncation()
    if any(v is None for v in b.sp.values()):
        raise _Skip("the tokenizer lacks BERT special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) that "
                    "the example builder needs")
    try:
        shards = resolve_corpus(d.corpus, d.text_field)
    except CorpusError as e:
        raise _Skip(str(e)) from None
    limit = -(-d.max_documents // len(shards)) if d.max_documents else 0
    parts: list[dict] = []
    n_docs = 0

    def flush(ids: list[str], texts: list[str]) -> None:
        nonlocal n_docs
        if ids:
            parts.append(b.build(ids, texts, epoch=0)[0])
            n_docs += len(ids)

    def n_rows() -> int:
        return sum(len(p["input_ids"]) for p in parts)

    for shard in shards:            # as pipelines/data.py: batches of batch_rows documents read,
        ids, texts, n = [], [], 0    # of which the held-out ones are built together
        for doc in iter_documents(shard, min_chars=d.min_chars, max_doc_chars=d.max_doc_chars):
            n += 1
            if is_validation(doc["id"], d.val_fraction):
                ids.append(doc["id"])
                texts.append(doc["text"])
            if n % d.batch_rows == 0:
                flush(ids, texts)
                ids, texts = [], []
                if n_rows() >= max_rows:
                    break
            if limit and n >= limit:
                break
        flush(ids, texts)
        if n_rows() >= max_rows:
            break
    if not n_rows():
        raise _Skip(f"no held-out documents in corpus '{d.corpus}' (data.val_fraction={d.val_fraction})")
    rows = {k: np.concatenate([p[k] for p in parts])[:max_rows] for k in parts[0]}
    return rows, b, f"{n_docs:,} held-out documents of {d.corpus}"


def _eval_config(lm: LoadedModel, corpus: str | None) -> tuple[Config, str]:
    cfg, src = load_train_config(lm.dir)
    if corpus:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=corpus))
    return cfg, src


def mlm_metrics(model, ids: np.ndarray, labels: np.ndarray, pad_id: int, token_type_ids=None,
                batch_size: int = 64) -> dict[str, float]:
    """MLM loss / accuracy over masked positions; the vocabulary projection runs only there."""
    import torch

    with torch.no_grad():
        return _mlm_metrics(model, ids, labels, pad_id, token_type_ids, batch_size)


def _mlm_metrics(model, ids, labels, pad_id, token_type_ids, batch_size) -> dict[str, float]:
    import torch

    from ssl_core.model import mlm_logits_at
    from ssl_core.objectives.mlm import mlm_loss

    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    for i in range(0, len(ids), batch_size):
        x = torch.as_tensor(ids[i:i + batch_size], dtype=torch.long)          # (B, T)
        y = torch.as_tensor(labels[i:i + batch_size], dtype=torch.long)       # (B, T)
        sel = y != IGNORE_INDEX
        if not sel.any():
            continue
        tt = None if token_type_ids is None else \
            torch.as_tensor(token_type_ids[i:i + batch_size], dtype=torch.long)
        logits = mlm_logits_at(model, x, (x != pad_id).long(), sel, tt)        # (M, V)
        total, correct = mlm_loss(logits, y[sel])
        tot_loss += float(total)
        tot_correct += int(correct)
        tot_n += int(sel.sum())
    if not tot_n:
        raise _Skip("no masked token in the held-out rows")
    return {"mlm_loss": tot_loss / tot_n, "mlm_accuracy": tot_correct / tot_n, "mlm_tokens": float(tot_n)}


def _token_types(lm: LoadedModel, rows: dict):
    """Segment ids of NSP rows, when the model has segment embeddings for them (RoBERTa-style
    configs with ``type_vocab_size`` 1 get none)."""
    tt = rows.get("token_type_ids")
    return tt if tt is not None and getattr(lm.config, "type_vocab_size", 1) > 1 else None


def task_mlm(lm: LoadedModel, corpus: str | None, batch_size: int, max_rows: int):
    from ssl_core.model import EVAL_RATIO, EVAL_SEED

    if lm.mlm is None:
        raise _Skip(lm.no_head_reason)
    cfg, src = _eval_config(lm, corpus)
    rows, b, what = heldout_rows(cfg, lm.dir, max_rows)
    ids, labels = b.masker(ratio=EVAL_RATIO, strategy="token").keyed(rows["input_ids"], seed=EVAL_SEED, epoch=0)
    r = mlm_metrics(lm.mlm, ids, labels, b.sp["pad"], _token_types(lm, rows), batch_size)
    return r, (f"{len(ids):,} rows, {int(r['mlm_tokens']):,} masked tokens, {what}; "
               f"{EVAL_RATIO:.0%} token mask seed {EVAL_SEED}; {src}")


def task_nsp(lm: LoadedModel, corpus: str | None, batch_size: int, max_rows: int):
    heads = lm.dir / HEADS_FILE
    if not heads.is_file():
        raise _Skip(f"no {HEADS_FILE} in the model directory (not trained with NSP)")
    import torch
    from safetensors.torch import load_file

    sd = {k[len("nsp_head."):]: v for k, v in load_file(str(heads)).items() if k.startswith("nsp_head.")}
    if not sd:
        raise _Skip(f"{HEADS_FILE} holds no nsp_head.* weights")
    H = lm.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.Tanh(), torch.nn.Linear(H, 2))
    head.load_state_dict(sd)
    head.eval()
    cfg, src = _eval_config(lm, corpus)
    cfg = dataclasses.replace(cfg, objectives=dataclasses.replace(cfg.objectives, nsp=True))
    rows, b, what = heldout_rows(cfg, lm.dir, 4 * max_rows)
    keep = rows["nsp_label"] != IGNORE_INDEX
    tt = _token_types(lm, rows)
    x_all, y_all = rows["input_ids"][keep][:max_rows], rows["nsp_label"][keep][:max_rows]
    tt_all = tt[keep][:max_rows] if tt is not None else None
    if not len(y_all):
        raise _Skip(f"no labelled NSP pair in the {what}")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y_all), batch_size):
            x = torch.as_tensor(x_all[i:i + batch_size], dtype=torch.long)
            kw = {} if tt_all is None else {"token_type_ids": torch.as_tensor(tt_all[i:i + batch_size],
                                                                              dtype=torch.long)}
            h = lm.encoder(input_ids=x, attention_mask=(x != b.sp["pad"]).long(),
                           **kw).last_hidden_state                             # (B, T, H)
            pred = head(h[:, 0]).argmax(-1).numpy()
            correct += int((pred == y_all[i:i + batch_size]).sum())
    share = float((y_all == 1).mean())
    return ({"nsp_accuracy": correct / len(y_all), "nsp_pairs": float(len(y_all))},
            f"{len(y_all):,} unmasked pairs (NotNext share {share:.2f}), {what}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def task_sts(lm: LoadedModel, path: Path, score_col: str, batch_size: int):
    rows = read_tsv(path)
    s1, s2 = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows]
    gold = np.array([float(r[score_col]) for r in rows])
    uniq = list(dict.fromkeys(s1 + s2))
    emb = lm.encode(uniq, batch_size)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    pos = {s: i for i, s in enumerate(uniq)}
    cos = (emb[[pos[s] for s in s1]] * emb[[pos[s] for s in s2]]).sum(1)
    return _spearman(cos, gold), f"{len(rows):,} pairs of {path}"


def _probe(lm: LoadedModel, train_x, train_y, test_x, test_y, batch_size: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(lm.encode(train_x, batch_size), train_y)
    return float((clf.predict(lm.encode(test_x, batch_size)) == np.asarray(test_y)).mean())


def task_sst2(lm: LoadedModel, root: Path, batch_size: int, train_size: int = SST2_TRAIN_SAMPLE):
    train, dev = read_tsv(root / "sst2" / "train.tsv"), read_tsv(root / "sst2" / "dev.tsv")
    rng = np.random.default_rng(SAMPLE_SEED)
    pick = rng.choice(len(train), size=min(train_size, len(train)), replace=False)
    tr = [train[i] for i in pick]
    acc = _probe(lm, [r["sentence"] for r in tr], [r["label"] for r in tr],
                 [r["sentence"] for r in dev], [r["label"] for r in dev], batch_size)
    return acc, (f"logistic regression on {len(tr):,} seeded train sentences (seed {SAMPLE_SEED}), "
                 f"{len(dev):,} dev sentences")


def task_trec(lm: LoadedModel, root: Path, batch_size: int):
    rows = read_tsv(root / "trec" / "train.tsv")
    perm = np.random.default_rng(SAMPLE_SEED).permutation(len(rows))
    cut = int(round(0.8 * len(rows)))
    tr, te = [rows[i] for i in perm[:cut]], [rows[i] for i in perm[cut:]]
    acc = _probe(lm, [r["text"] for r in tr], [r["coarse_label"] for r in tr],
                 [r["text"] for r in te], [r["coarse_label"] for r in te], batch_size)
    return acc, (f"6 coarse classes; no dev split here: fixed 80/20 split of train (seed {SAMPLE_SEED}), "
                 f"{len(tr):,} / {len(te):,}")


def task_fillmask(lm: LoadedModel):
    import torch

    if lm.mlm is None:
        raise _Skip(lm.no_head_reason)
    tok = lm.tokenizer
    if tok.mask_token is None:
        raise _Skip("the tokenizer has no mask token")
    examples, hits = [], 0
    for sent, answers in FILLMASK_PROBES:
        text = sent.replace("[MASK]", tok.mask_token)
        enc = tok(text, return_tensors="pt", truncation=True, max_length=lm.max_len)
        where = (enc["input_ids"][0] == tok.mask_token_id).nonzero()
        if not len(where):
            continue
        with torch.no_grad():
            logits = lm.mlm(**enc).logits[0, int(where[0, 0])]              # (V,)
        top = logits.topk(TOP_K).indices.tolist()
        words = [tok.decode([t]).strip() for t in top]
        hits += any(w.lower() in answers for w in words)
        examples.append((text, words))
    if not examples:
        raise _Skip("the mask token does not survive tokenization")
    return ({"fillmask_top5_hit_rate": hits / len(examples), "fillmask_examples": examples},
            f"{len(examples)} fixed probes; a smoke check of the MLM head")


# ---------------------------------------------------------------- the suite

def evaluate(model_dir: str | Path, tasks: str | list[str] | None = None, *,
             data_root: str | Path | None = None, corpus: str | None = None, batch_size: int = 64,
             max_rows: int = MAX_EVAL_ROWS, probe_train_size: int = SST2_TRAIN_SAMPLE, progress: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run the tasks on one model directory. Returns float metrics by key (``mlm_loss``,
    ``mlm_accuracy``, ``nsp_accuracy``, ``stsb_spearman``, ``sick_spearman``, ``sst2_accuracy``,
    ``trec_accuracy``, ``fillmask_top5_hit_rate``, ...) plus non-float entries: ``skipped``
    (task -> reason), ``notes`` (task -> what was measured), ``info`` (model_dir, pooling,
    max_seq_len) and, with fillmask, ``fillmask_examples`` ([(sentence, [top-k tokens])]).
    ``numeric(results)`` keeps the floats. ``probe_train_size``: SST-2 train sentences for the probe."""
    names = parse_tasks(tasks)
    root = Path(data_root) if data_root else default_data_root()
    if corpus and {"mlm", "nsp"} & set(names):           # a corpus given by hand must exist
        from ssl_core.text import CorpusError, resolve_corpus
        try:
            resolve_corpus(corpus)
        except CorpusError as e:
            raise EvaluationError(str(e)) from None
    say = progress or (lambda _m: None)
    lm = LoadedModel(model_dir)
    res: dict[str, Any] = {"skipped": {}, "notes": {},
                           "info": {"model_dir": str(lm.dir), "pooling": lm.pooling, "max_seq_len": lm.max_len}}
    for name in names:
        t0 = time.perf_counter()
        try:
            if name == "mlm":
                out, note = task_mlm(lm, corpus, batch_size, max_rows)
            elif name == "nsp":
                out, note = task_nsp(lm, corpus, batch_size, max_rows)
            elif name == "stsb":
                rho, note = task_sts(lm, root / "stsb" / "dev.tsv", "score", batch_size)
                out = {"stsb_spearman": rho}
            elif name == "sick":
                rho, note = task_sts(lm, root / "sick" / "dev.tsv", "relatedness_score", batch_size)
                out = {"sick_spearman": rho}
            elif name == "sst2":
                acc, note = task_sst2(lm, root, batch_size, probe_train_size)
                out = {"sst2_accuracy": acc}
            elif name == "trec":
                acc, note = task_trec(lm, root, batch_size)
                out = {"trec_accuracy": acc}
            else:
                out, note = task_fillmask(lm)
        except _Skip as e:
            res["skipped"][name] = str(e)
            say(f"[evaluate] {name}: skipped: {e}")
            continue
        res.update({k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in out.items()})
        res["notes"][name] = note
        shown = ", ".join(f"{k} {out[k]:.4f}" for k, _ in _ROWS[name] if k in out)
        say(f"[evaluate] {name}: {shown} ({time.perf_counter() - t0:.1f} s)")
    return res


def numeric(results: dict[str, Any]) -> dict[str, float]:
    """Only the float metrics (what a tracker logs)."""
    return {k: v for k, v in results.items() if isinstance(v, float)}


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table, one line per metric, skipped tasks with their reason."""
    skipped, notes, info = results.get("skipped", {}), results.get("notes", {}), results.get("info", {})
    lines = [f"evaluation of {info.get('model_dir', '?')} (pooling {info.get('pooling', '?')}, "
             f"max_seq_len {info.get('max_seq_len', '?')})",
             "scores are raw fractions: accuracy in [0, 1], Spearman ρ in [-1, 1] (not x100); "
             "MLM loss in nats per masked token",
             f"{'task':<9} {'metric':<30} {'value':>8}  notes"]
    lines.append("-" * len(lines[-1]) + "-" * 40)
    for task in TASKS:
        if task in skipped:
            lines.append(f"{task:<9} {'-':<30} {'skipped':>8}  {skipped[task]}")
            continue
        rows = [(k, label) for k, label in _ROWS[task] if k in results]
        for i, (k, label) in enumerate(rows):
            lines.append(f"{task if i == 0 else '':<9} {label:<30} {results[k]:>8.4f}  "
                         + (notes.get(task, "") if i == 0 else ""))
        if task == "fillmask":
            for sent, words in results.get("fillmask_examples", []):
                lines.append(f"{'':<9}   {sent}  ->  {', '.join(words)}")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    r = evaluate(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None,
                 progress=lambda m: print(m, file=sys.stderr))
    print(format_table(r))
