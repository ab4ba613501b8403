"""The evaluation suite: one exported model directory in, a dict of metrics and a table out.

    python -m ssl_core.evaluation MODEL_DIR [TASK,TASK,...]      # or: sslpipe evaluate MODEL

Tasks (every score is a fraction in [0, 1] or a Spearman ρ in [-1, 1], never x100):

* ``mlm``       MLM loss / accuracy at a FIXED 15% token mask (80/10/10, seed ``EVAL_SEED``) on the
                held-out documents of the corpus (``is_validation``), rows built by ``ExampleBuilder``
                from ``document_batches`` exactly as the data stage builds validation rows, scored by
                ``mlm_metrics`` (the trainer's evaluator too). Needs an MLM head.
* ``nsp``       NSP accuracy on held-out pairs (unmasked), with the head in ``sslpipe_heads.safetensors``.
* ``stsb``, ``sick``  Spearman ρ between the cosine of pooled embeddings and the gold scores (dev);
                STS-B dev ships with the package (``stsb_dev``), so it runs anywhere.
* ``sst2``, ``trec``  linear probe (logistic regression on frozen pooled embeddings): SST-2 trained
                on a seeded sample of train, scored on dev; TREC-6 (train only here) on a seeded 80/20
                split of train.
* ``fillmask``  top-5 predictions for a few fixed sentences (a smoke check of the MLM head).

Pooling is read from the directory's sentence-transformers ``Pooling`` config (``mean`` when there is
none), the maximum length from ``sentence_bert_config.json`` / the tokenizer. The other labelled
sets come from ``data_root``, a path or an fsspec URI (default ``SSLPIPE_DATA_ROOT`` or
``../shared/data`` beside the checkout); a missing file skips its task with a note, and no test
split is ever read.

A new task is a function ``task_NAME(lm, ctx) -> (metrics, note)`` added to ``TASK_FUNCTIONS`` (and
its name to ``ssl_core.config.EVAL_TASKS``, its rows to ``_ROWS``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ssl_core.config import EVAL_TASKS, Config, ConfigError
from ssl_core.errors import UserError
from ssl_core.export import CONFIG_FILE, HEADS_FILE
from ssl_core.masking import EVAL_RATIO, EVAL_SEED, IGNORE_INDEX

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


class EvaluationError(UserError):
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


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """A labelled TSV (a local path or an fsspec URI): header row, tab-separated, NO quoting."""
    import io

    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(str(path))
        if not fs.isfile(p):
            raise FileNotFoundError(p)
        text = fs.cat_file(p).decode("utf-8")
    except (FileNotFoundError, OSError) as e:
        raise _Skip(f"data file {path} not found (set --data-root, eval.data_root or "
                    f"SSLPIPE_DATA_ROOT){'' if isinstance(e, FileNotFoundError) else f': {e}'}") from None
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))


STSB_DEV = "stsb_dev.tsv"       # shipped in ssl_core/resources (see its README: CC BY-SA 4.0)


def stsb_dev() -> tuple[list[str], list[str], np.ndarray]:
    """The STS-B dev pairs shipped with the package: (sentences 1, sentences 2, gold scores 0-5)."""
    from importlib.resources import files

    text = (files("ssl_core") / "resources" / STSB_DEV).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    return ([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
            np.array([float(r["score"]) for r in rows]))


def sts_spearman(embed: Callable[[list[str]], np.ndarray], s1: list[str], s2: list[str],
                 gold: np.ndarray) -> float:
    """Spearman ρ between the cosine of the embeddings of each pair and the gold scores;
    ``embed`` maps sentences to (N, H) vectors (each distinct sentence is embedded once)."""
    uniq = list(dict.fromkeys(s1 + s2))
    emb = np.asarray(embed(uniq), dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    pos = {s: i for i, s in enumerate(uniq)}
    cos = (emb[[pos[s] for s in s1]] * emb[[pos[s] for s in s2]]).sum(1)
    return _spearman(cos, gold)


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
        self.dense = self._dense()
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

    def _dense(self) -> list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]]:
        """(weight, bias, activation) of each sentence-transformers Dense module after pooling (the
        whitening map of ``embedding.whiten``, or a third-party model's projection); identity and
        tanh activations (sentence-transformers' default), others are refused by name."""
        from ssl_core.export import IDENTITY

        acts = {IDENTITY: lambda x: x, "torch.nn.modules.activation.Tanh": np.tanh}
        mods = self.dir / "modules.json"
        out = []
        for m in json.loads(mods.read_text(encoding="utf-8")) if mods.is_file() else []:
            if not str(m.get("type", "")).endswith("Dense"):
                continue
            d = self.dir / m.get("path", "")
            conf = json.loads((d / "config.json").read_text(encoding="utf-8"))
            act = conf.get("activation_function", "torch.nn.modules.activation.Tanh")
            if act not in acts or conf.get("use_residual"):
                raise EvaluationError(f"Dense module {d} (activation {act!r}, residual "
                                      f"{bool(conf.get('use_residual'))}) is not supported: "
                                      f"no residual, activation one of {', '.join(acts)}")
            from safetensors.numpy import load_file
            t = load_file(str(d / "model.safetensors"))
            bias = t.get("linear.bias", np.zeros(conf["out_features"], dtype=np.float32))
            out.append((t["linear.weight"].astype(np.float32), bias.astype(np.float32), acts[act]))
        return out

    def _max_len(self) -> int:
        from ssl_core.encoder import usable_positions

        sb = self.dir / "sentence_bert_config.json"
        n = json.loads(sb.read_text(encoding="utf-8")).get("max_seq_length") if sb.is_file() else None
        n = n or self.tokenizer.model_max_length
        pos = usable_positions(self.config)
        return int(min(n, pos or n, 512))

    def encode(self, sentences: list[str], batch_size: int = 64, dense: bool = True) -> np.ndarray:
        """Sentence embeddings (N, H), float32: pooled, then through the directory's Dense modules
        unless ``dense`` is False; batches sorted by length (less padding on CPU)."""
        import torch

        from ssl_core.encoder import pool

        order = np.argsort([-len(s) for s in sentences], kind="stable")
        out = np.zeros((len(sentences), self.config.hidden_size), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            enc = self.tokenizer([sentences[j] for j in idx], padding=True, truncation=True,
                                 max_length=self.max_len, return_tensors="pt")
            with torch.no_grad():
                h = self.encoder(**enc).last_hidden_state             # (B, T, H)
            out[idx] = pool(h, enc["attention_mask"], self.pooling).float().numpy()
        for w, b, act in self.dense if dense else []:
            out = act(out @ w.T + b)
        return out


# ---------------------------------------------------------------- held-out rows (mlm, nsp)

def load_train_config(model_dir: Path) -> tuple[Config, str]:
    """The training config saved beside the model, else the defaults (and which one it was)."""
    p = model_dir / CONFIG_FILE
    if not p.is_file():
        return Config(), "default config (no sslpipe_config.json)"
    try:
        return Config.from_dict(json.loads(p.read_text(encoding="utf-8"))), CONFIG_FILE
    except ConfigError as e:
        raise _Skip(f"{p} does not match this version's config ({e})") from None


def heldout_rows(cfg: Config, tokenizer_dir: Path, max_rows: int) -> tuple[dict, Any, str]:
    """Unmasked rows of the held-out documents (``is_validation``), built group by group from
    ``document_batches`` as the data stage builds them, reading at most the documents the
    pipeline reads (``data.max_documents``), up to ``max_rows``."""
    from ssl_core.examples import ExampleBuilder
    from ssl_core.text import CorpusError, document_batches, per_shard_limit, resolve_corpus

    b = ExampleBuilder(cfg, str(tokenizer_dir))
    b.tok.no_padding()
    b.tok.no_truncation()
    if any(v is None for v in b.sp.values()):
        raise _Skip("the tokenizer lacks BERT special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) that "
                    "the example builder needs")
    try:
        shards = resolve_corpus(cfg.data.corpus, cfg.data.text_field)
    except CorpusError as e:
        raise _Skip(str(e)) from None
    limit = per_shard_limit(cfg.data.max_documents, len(shards))
    parts, n_docs, n_rows = [], 0, 0
    for shard in shards:
        for docs in document_batches(shard, cfg.data, limit=limit):
            rows, c = b.build_split(docs, "val", mask_val=False)
            if len(rows["input_ids"]):
                parts.append(rows)
            n_docs += c["documents"]
            n_rows += len(rows["input_ids"])
            if n_rows >= max_rows:
                break
        if n_rows >= max_rows:
            break
    if not n_rows:
        raise _Skip(f"no held-out documents in corpus '{cfg.data.corpus}' "
                    f"(data.val_fraction={cfg.data.val_fraction})")
    rows = {k: np.concatenate([p[k] for p in parts])[:max_rows] for k in parts[0]}
    return rows, b, f"{n_docs:,} held-out documents of {cfg.data.corpus}"


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What the tasks share: held-out corpus override, labelled-data root, sizes."""
    corpus: str | None
    root: str                     # labelled data: a path or an fsspec URI
    batch_size: int = 64
    max_rows: int = MAX_EVAL_ROWS
    probe_train_size: int = SST2_TRAIN_SAMPLE


def _eval_config(lm: LoadedModel, corpus: str | None) -> tuple[Config, str]:
    cfg, src = load_train_config(lm.dir)
    if corpus:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=corpus))
    return cfg, src


def task_mlm(lm: LoadedModel, ctx: EvalContext):
    from ssl_core.objectives.mlm import mlm_metrics

    if lm.mlm is None:
        raise _Skip(lm.no_head_reason)
    cfg, src = _eval_config(lm, ctx.corpus)
    rows, b, what = heldout_rows(cfg, lm.dir, ctx.max_rows)
    masked = b.mask_for_eval(rows)
    r = mlm_metrics(lm.mlm, [masked], b.sp["pad"], ctx.batch_size)
    if not r["mlm_tokens"]:
        raise _Skip("no masked token in the held-out rows")
    return r, (f"{len(rows['input_ids']):,} rows, {int(r['mlm_tokens']):,} masked tokens, {what}; "
               f"{EVAL_RATIO:.0%} token mask seed {EVAL_SEED}; {src}")


def task_nsp(lm: LoadedModel, ctx: EvalContext):
    heads = lm.dir / HEADS_FILE
    if not heads.is_file():
        raise _Skip(f"no {HEADS_FILE} in the model directory (not trained with NSP)")
    from safetensors.torch import load_file

    from ssl_core.objectives.nsp import HEAD_PREFIX, nsp_head, nsp_metrics

    sd = {k[len(HEAD_PREFIX):]: v for k, v in load_file(str(heads)).items() if k.startswith(HEAD_PREFIX)}
    if not sd:
        raise _Skip(f"{HEADS_FILE} holds no {HEAD_PREFIX}* weights")
    head = nsp_head(lm.config.hidden_size)
    head.load_state_dict(sd)
    cfg, src = _eval_config(lm, ctx.corpus)
    cfg = dataclasses.replace(cfg, objectives=dataclasses.replace(cfg.objectives, nsp=True))
    rows, b, what = heldout_rows(cfg, lm.dir, 4 * ctx.max_rows)
    keep = np.flatnonzero(rows["nsp_label"] != IGNORE_INDEX)[:ctx.max_rows]
    if not len(keep):
        raise _Skip(f"no labelled NSP pair in the {what}")
    pairs = {k: v[keep] for k, v in rows.items()}
    r = nsp_metrics(lm.encoder, head, [pairs], b.sp["pad"], ctx.batch_size)
    share = float((pairs["nsp_label"] == 1).mean())
    return r, f"{int(r['nsp_pairs']):,} unmasked pairs (NotNext share {share:.2f}), {what}"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def task_stsb(lm: LoadedModel, ctx: EvalContext):
    s1, s2, gold = stsb_dev()
    rho = sts_spearman(lambda xs: lm.encode(xs, ctx.batch_size), s1, s2, gold)
    return {"stsb_spearman": rho}, f"{len(gold):,} pairs of STS-B dev (shipped with sslpipe)"


def task_sick(lm: LoadedModel, ctx: EvalContext):
    path = _url(ctx.root, "sick", "dev.tsv")
    rows = read_tsv(path)
    rho = sts_spearman(lambda xs: lm.encode(xs, ctx.batch_size), [r["sentence1"] for r in rows],
                       [r["sentence2"] for r in rows], np.array([float(r["relatedness_score"]) for r in rows]))
    return {"sick_spearman": rho}, f"{len(rows):,} pairs of {path}"


def _url(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def _probe(lm: LoadedModel, train_x, train_y, test_x, test_y, batch_size: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(lm.encode(train_x, batch_size), train_y)
    return float((clf.predict(lm.encode(test_x, batch_size)) == np.asarray(test_y)).mean())


def task_sst2(lm: LoadedModel, ctx: EvalContext):
    train, dev = read_tsv(_url(ctx.root, "sst2", "train.tsv")), read_tsv(_url(ctx.root, "sst2", "dev.tsv"))
    rng = np.random.default_rng(SAMPLE_SEED)
    pick = rng.choice(len(train), size=min(ctx.probe_train_size, len(train)), replace=False)
    tr = [train[i] for i in pick]
    acc = _probe(lm, [r["sentence"] for r in tr], [r["label"] for r in tr],
                 [r["sentence"] for r in dev], [r["label"] for r in dev], ctx.batch_size)
    return {"sst2_accuracy": acc}, (f"logistic regression on {len(tr):,} seeded train sentences "
                                    f"(seed {SAMPLE_SEED}), {len(dev):,} dev sentences")


def task_trec(lm: LoadedModel, ctx: EvalContext):
    rows = read_tsv(_url(ctx.root, "trec", "train.tsv"))
    perm = np.random.default_rng(SAMPLE_SEED).permutation(len(rows))
    cut = int(round(0.8 * len(rows)))
    tr, te = [rows[i] for i in perm[:cut]], [rows[i] for i in perm[cut:]]
    acc = _probe(lm, [r["text"] for r in tr], [r["coarse_label"] for r in tr],
                 [r["text"] for r in te], [r["coarse_label"] for r in te], ctx.batch_size)
    return {"trec_accuracy": acc}, (f"6 coarse classes; no dev split here: fixed 80/20 split of "
                                    f"train (seed {SAMPLE_SEED}), {len(tr):,} / {len(te):,}")


def task_fillmask(lm: LoadedModel, ctx: EvalContext):
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


TASK_FUNCTIONS: dict[str, Callable[[LoadedModel, EvalContext], tuple[dict, str]]] = {
    "mlm": task_mlm, "nsp": task_nsp, "stsb": task_stsb, "sick": task_sick, "sst2": task_sst2,
    "trec": task_trec, "fillmask": task_fillmask}


# ---------------------------------------------------------------- the suite

def evaluate(model_dir: str | Path, tasks: str | list[str] | None = None, *,
             data_root: str | Path | None = None, corpus: str | None = None, batch_size: int = 64,
             max_rows: int = MAX_EVAL_ROWS, probe_train_size: int = SST2_TRAIN_SAMPLE,
             progress: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run the tasks on one model directory. Returns float metrics by key (``mlm_loss``,
    ``mlm_accuracy``, ``nsp_accuracy``, ``stsb_spearman``, ``sick_spearman``, ``sst2_accuracy``,
    ``trec_accuracy``, ``fillmask_top5_hit_rate``, ...) plus non-float entries: ``skipped``
    (task -> reason), ``notes`` (task -> what was measured), ``info`` (model_dir, pooling,
    max_seq_len) and, with fillmask, ``fillmask_examples`` ([(sentence, [top-k tokens])]).
    ``numeric(results)`` keeps the floats. ``probe_train_size``: SST-2 train sentences for the probe."""
    names = parse_tasks(tasks)
    ctx = EvalContext(corpus, str(data_root) if data_root else str(default_data_root()), batch_size,
                      max_rows, probe_train_size)
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
            out, note = TASK_FUNCTIONS[name](lm, ctx)
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
