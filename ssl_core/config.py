"""Typed configuration: one frozen dataclass per component, loaded from YAML.

Unknown keys are an error that names the key; ``--set section.key=value`` overrides are
parsed as YAML scalars and type-checked against the field they set.

    cfg = load_config("path/to/my.yaml", ["train.max_steps=20"])
    cfg = Config.from_dict(json.loads(text))          # validated, e.g. a saved run's config

Shipped configs (``default``, ``tiny``, ...) live in ``pipelines/configs`` and are found by name
through ``pipelines.configs.load_config``, which passes their directory as ``search``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ssl_core.errors import UserError


class ConfigError(UserError):
    """A configuration the user can fix: an unknown key, a wrong type, a bad value."""


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "builtin:python-docs"   # named source, or path / fsspec URI / glob (comma separated)
    text_field: str = "text"              # .jsonl field / .parquet column holding the text
    max_seq_len: int = 128                # tokens per packed training sequence, [CLS] and [SEP] included
    min_chars: int = 20                   # documents shorter than this (after cleaning) are skipped
    max_documents: int = 0                # 0 = all; otherwise stop after this many documents (quick runs)
    val_fraction: float = 0.02            # share of documents held out (stable hash of the document id)
    batch_rows: int = 256                 # documents per Ray Data tokenize/pack batch
    tokenize_actors: int = 1              # size of the tokenizer actor pool
    max_doc_chars: int = 1_000_000        # longer documents (or lines) are cut into pieces this long
    max_epochs: int = 1000                # passes over the data at most (training stops at max_steps)
    shuffle_buffer: int = 2000            # rows in each worker's local shuffle buffer (0 = off)
    resources: str = ""                   # Ray resources each read task / tokenizer actor asks for, e.g.
                                          # "sslpipe_data:0.01" to keep them on the CPU pool (cluster/)

    def validate(self) -> None:
        parse_amounts(self.resources, "data.resources")
        _check(self.max_seq_len >= 8, "data.max_seq_len must be >= 8")
        _check(0.0 <= self.val_fraction < 0.5, "data.val_fraction must be in [0, 0.5)")
        _check(self.batch_rows >= 1, "data.batch_rows must be >= 1")
        _check(self.tokenize_actors >= 1, "data.tokenize_actors must be >= 1")
        _check(self.max_documents >= 0, "data.max_documents must be >= 0")
        _check(self.max_doc_chars >= 1000, "data.max_doc_chars must be >= 1000")
        _check(self.max_epochs >= 1, "data.max_epochs must be >= 1")


@dataclass(frozen=True)
class TokenizerConfig:
    path: str = ""                # an existing HF tokenizer directory; empty = train one on the corpus
    vocab_size: int = 8000
    lowercase: bool = True
    sample_documents: int = 20000  # documents sampled from the corpus to train the tokenizer
    min_frequency: int = 2

    def validate(self) -> None:
        _check(self.vocab_size >= 200, "tokenizer.vocab_size must be >= 200")
        _check(self.sample_documents >= 1, "tokenizer.sample_documents must be >= 1")


@dataclass(frozen=True)
class ObjectivesConfig:
    mlm: bool = True              # masked language modeling
    nsp: bool = False             # next-sentence prediction pairs
    contrastive: bool = False     # two augmented views per text (InfoNCE)
    mlm_weight: float = 1.0       # weights of the objectives in the summed loss
    nsp_weight: float = 1.0
    contrastive_weight: float = 1.0

    def validate(self) -> None:
        _check(self.mlm or self.nsp or self.contrastive, "enable at least one of objectives.mlm, "
               "objectives.nsp, objectives.contrastive")
        for k in ("mlm_weight", "nsp_weight", "contrastive_weight"):
            _check(getattr(self, k) >= 0, f"objectives.{k} must be >= 0")


@dataclass(frozen=True)
class MaskingConfig:
    ratio: float = 0.15          # share of (non-special) tokens selected for prediction
    mask_prob: float = 0.8       # of the selected: replaced by [MASK]
    random_prob: float = 0.1     # of the selected: replaced by a random token (the rest stay as they are)
    strategy: str = "token"      # token | whole_word | span
    schedule: str = "constant"   # constant | linear (ratio -> ratio_end over training)
    ratio_end: float = 0.15      # final ratio of the linear schedule
    span_p: float = 0.2          # span masking: span length ~ Geometric(span_p) words ...
    span_max: int = 10           # ... clipped at span_max
    seed: int = 0

    def validate(self) -> None:
        _check(0.0 < self.ratio < 1.0, "masking.ratio must be in (0, 1)")
        _check(0.0 < self.ratio_end < 1.0, "masking.ratio_end must be in (0, 1)")
        _check(self.strategy in ("token", "whole_word", "span"),
               f"masking.strategy must be token, whole_word or span, got {self.strategy!r}")
        _check(self.schedule in ("constant", "linear"),
               f"masking.schedule must be constant or linear, got {self.schedule!r}")
        _check(0.0 < self.span_p < 1.0, "masking.span_p must be in (0, 1)")
        _check(self.span_max >= 1, "masking.span_max must be >= 1")
        _check(0.0 <= self.mask_prob <= 1.0, "masking.mask_prob must be in [0, 1]")
        _check(0.0 <= self.random_prob <= 1.0, "masking.random_prob must be in [0, 1]")
        _check(self.mask_prob + self.random_prob <= 1.0 + 1e-9,
               "masking.mask_prob + masking.random_prob must be <= 1")


@dataclass(frozen=True)
class NspConfig:
    not_next_prob: float = 0.5    # share of NotNext pairs (B from another document)
    short_seq_prob: float = 0.1   # share of instances with a shorter random target length
    buffer_docs: int = 256        # recent documents kept per worker as NotNext partners

    def validate(self) -> None:
        _check(0.0 < self.not_next_prob < 1.0, "nsp.not_next_prob must be in (0, 1)")
        _check(0.0 <= self.short_seq_prob <= 1.0, "nsp.short_seq_prob must be in [0, 1]")
        _check(self.buffer_docs >= 2, "nsp.buffer_docs must be >= 2")


@dataclass(frozen=True)
class ContrastiveConfig:
    view_a: str = "identity"      # augmentation chain of the first view, e.g. "crop:0.8,delete:0.1"
    view_b: str = "identity"      # ... and of the second (identity + identity = SimCSE dropout views)
    temperature: float = 0.05     # InfoNCE temperature τ
    pooling: str = "mean"         # mean | cls: sentence embedding (also what the exported model pools)
    projection: bool = False      # SimCSE-style MLP on the pooled embedding, used in training only
    batch_size: int = 64          # view pairs per worker per step (negatives: all pairs of all workers)
    max_tokens: int = 32          # a view's text unit: a sentence (short ones joined) of at most this many tokens
    min_tokens: int = 4           # shorter units are not used
    start: float = 0.0            # share of training (steps or time budget) before contrastive joins: the other objectives alone until then
    dropout: float = -1.0         # encoder dropout once contrastive has joined (SimCSE's view noise); < 0: model.dropout throughout

    def validate(self) -> None:
        from ssl_core.augment import parse_chain
        _check(self.temperature > 0, "contrastive.temperature must be > 0")
        _check(self.batch_size >= 2, "contrastive.batch_size must be >= 2 (in-batch negatives)")
        _check(0.0 <= self.start < 1.0, "contrastive.start must be in [0, 1): the share of training before it joins")
        _check(self.dropout < 1.0, "contrastive.dropout must be < 1 (negative: model.dropout throughout)")
        _check(1 <= self.min_tokens <= self.max_tokens,
               "contrastive.min_tokens must be in [1, contrastive.max_tokens]")
        _check(self.pooling in ("mean", "cls"), f"contrastive.pooling must be mean or cls, got {self.pooling!r}")
        for name in ("view_a", "view_b"):
            try:
                parse_chain(getattr(self, name))
            except ValueError as e:
                raise ConfigError(f"contrastive.{name}: {e}") from None


@dataclass(frozen=True)
class EmbeddingConfig:
    # the sentence embedding of the exported model (SentenceTransformer(dir), `embed` when served)
    whiten: bool = False          # after training, fit a whitening map of the pooled embedding on corpus sentences (exported as a Dense module)
    whiten_sentences: int = 10000  # training-corpus sentences it is fitted on (>= 2x hidden_size)

    def validate(self) -> None:
        _check(self.whiten_sentences >= 2, "embedding.whiten_sentences must be >= 2")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "bert"            # bert | roberta | any transformers model type with a masked-LM head
    init_from: str = ""           # HF model directory to continue pretraining from (sizes below ignored)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.1          # hidden-state dropout (also what makes SimCSE's two identity views differ)
    attention_dropout: float = 0.0  # on attention probabilities; 0 lets SDPA use its fused kernel (~1.26x on CPU)
    attention: str = "auto"       # training kernel: auto (sdpa on GPU, eager on CPU: ~1.3x a step there) | sdpa | eager

    def validate(self) -> None:
        _check(0.0 <= self.attention_dropout < 1.0, "model.attention_dropout must be in [0, 1)")
        _check(self.attention in ("auto", "sdpa", "eager"),
               f"model.attention must be auto, sdpa or eager, got {self.attention!r}")
        _check(bool(self.arch.strip()), "model.arch must name a transformers model type (bert, roberta, ...)")
        _check(self.hidden_size % self.num_heads == 0,
               "model.hidden_size must be a multiple of model.num_heads")
        _check(self.num_layers >= 1, "model.num_layers must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    num_workers: int = 2          # Ray Train workers (DDP)
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    batch_size: int = 16          # sequences per worker per micro-step
    grad_accum: int = 1           # micro-steps per optimizer step
    max_steps: int = 200          # optimizer steps
    max_minutes: float = 0.0      # > 0: time budget; the LR schedule fits it and training stops at it
    lr: float = 7e-4
    lr_schedule: str = "linear"   # linear | cosine | constant (after warmup)
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0        # max gradient norm (0 = off)
    precision: str = "auto"       # auto (bf16 on GPU and on CPUs with native bf16) | bf16 | fp32
    bf16_stream: bool = False     # CPU + bf16: the encoder's residual stream in bf16, not fp32 (1.1x/step)
    compile: bool = False         # torch.compile the encoder
    quiet_threads: bool = False   # CPU Train workers: Ray's/gloo's threads get SCHED_IDLE (no shown gain yet)
    ddp_shm: bool = True          # CPU DDP workers on one host average gradients through /dev/shm, not gloo
    log_every: int = 10
    checkpoint_every: int = 100   # steps between checkpoints (0 = only the final one)
    keep_checkpoints: int = 2     # checkpoints kept on storage (the newest)
    max_failures: int = 2         # worker failures survived by resuming from the last checkpoint
    seed: int = 0
    resources_per_worker: str = ""  # extra Ray resources per worker, e.g. "sslpipe_train:1" (GPU pool)
    storage_path: str = ""        # checkpoints: a path or s3:// gs:// URI shared by all nodes ("" = the run dir)
    placement: str = "PACK"       # Ray placement of the workers: PACK | SPREAD (one per node where it can)

    def validate(self) -> None:
        extra = parse_amounts(self.resources_per_worker, "train.resources_per_worker")
        _check(self.placement in ("PACK", "SPREAD"), f"train.placement must be PACK or SPREAD, got {self.placement!r}")
        _check(not {"CPU", "GPU"} & set(extra), "train.resources_per_worker: set CPU and GPU with "
               "train.cpus_per_worker and train.use_gpu")
        _check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(self.max_minutes >= 0, "train.max_minutes must be >= 0")
        _check(self.lr_schedule in ("linear", "cosine", "constant"),
               f"train.lr_schedule must be linear, cosine or constant, got {self.lr_schedule!r}")
        _check(self.precision in ("auto", "bf16", "fp32"),
               f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
        _check(self.max_failures >= -1, "train.max_failures must be >= -1 (-1 = unlimited)")
        _check(self.num_workers >= 1, "train.num_workers must be >= 1")
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker must be > 0")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.log_every >= 1, "train.log_every must be >= 1")


EVAL_TASKS = ("mlm", "nsp", "stsb", "sick", "sst2", "trec", "fillmask")


@dataclass(frozen=True)
class EvalConfig:
    # run on the exported model after training (`sslpipe evaluate` runs any of them later); the
    # fixed-15% MLM and NSP evaluation on the held-out split runs in the trainer anyway
    tasks: str = "stsb,sick,sst2,trec"
    heldout_rows: int = 1024      # held-out rows the trainer scores before and after training (MLM, NSP)
    every: int = 0                # > 0: also every this many steps (+ STS-B dev Spearman), reported (Tune)
    data_root: str = ""           # labelled sets (sick/, sst2/, trec/): a path or fsspec URI; "" = default

    def validate(self) -> None:
        _check(self.heldout_rows >= 1, "eval.heldout_rows must be >= 1")
        _check(self.every >= 0, "eval.every must be >= 0")
        for t in (x.strip() for x in self.tasks.split(",") if x.strip()):
            _check(t in EVAL_TASKS, f"eval.tasks: unknown task {t!r} (known: {', '.join(EVAL_TASKS)})")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "sslpipe"
    registered_model: str = "sslpipe-encoder"
    run_name: str = ""            # empty = generated
    champion_metric: str = "auto"   # what @champion is compared on: auto = stsb_spearman, else mlm_accuracy
    system_metrics: bool = True   # CPU / memory / GPU of the driver logged with every run

    def validate(self) -> None:
        _check(self.champion_metric in ("auto",) + CHAMPION_METRICS,
               f"mlflow.champion_metric must be auto or one of {', '.join(CHAMPION_METRICS)}, "
               f"got {self.champion_metric!r}")


CHAMPION_METRICS = ("stsb_spearman", "mlm_accuracy", "sick_spearman", "nsp_accuracy")
TUNE_METRICS = ("mlm_accuracy", "stsb_spearman", "nsp_accuracy")


def parse_range(text: str, key: str) -> tuple[float, float] | None:
    """``"low,high"`` -> (low, high); "" -> None (not searched). ConfigError on a bad range."""
    if not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{key}: expected 'low,high', got {text!r}") from None
    _check(lo < hi, f"{key}: low {lo} must be below high {hi}")
    return lo, hi


def parse_amounts(text: str, key: str) -> dict[str, float]:
    """``"name:amount,name:amount"`` -> {name: amount} (Ray resources); "" -> {}."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, _, amount = part.partition(":")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            raise ConfigError(f"{key}: {part!r} is not name:amount (e.g. 'sslpipe_data:0.01')") from None
        _check(bool(name.strip()) and out[name.strip()] > 0, f"{key}: {part!r} needs a name and an amount > 0")
    return out


@dataclass(frozen=True)
class TuneConfig:
    num_samples: int = 8              # trials
    max_concurrent_trials: int = 0    # 0 = as many as the cluster's CPUs fit (one at a time on 2 cores)
    time_budget_minutes: float = 0.0  # > 0: no new trial after this; running ones are stopped
    seed: int = 0
    metric: str = "auto"              # auto | mlm_accuracy | stsb_spearman | nsp_accuracy | weighted
    weights: str = ""                 # metric=weighted: "mlm_accuracy:1,stsb_spearman:1"
    eval_every: int = 50              # steps between evaluations (what ASHA compares trials on)
    grace_period: int = 2             # evaluations every trial gets before ASHA may stop it
    reduction_factor: int = 2         # ASHA keeps 1 in this many at each rung
    mask_ratio: str = "0.10,0.50"     # masking.ratio searched uniformly in low,high ("" = not searched)
    ratio_end: str = ""               # masking.ratio_end (linear schedule) in low,high
    temperature: str = "0.01,0.2"     # contrastive.temperature, log-uniform (searched when contrastive is on)
    lr: str = ""                      # train.lr, log-uniform

    def validate(self) -> None:
        _check(self.num_samples >= 1, "tune.num_samples must be >= 1")
        _check(self.max_concurrent_trials >= 0, "tune.max_concurrent_trials must be >= 0")
        _check(self.time_budget_minutes >= 0, "tune.time_budget_minutes must be >= 0")
        _check(self.eval_every >= 1, "tune.eval_every must be >= 1")
        _check(self.grace_period >= 1, "tune.grace_period must be >= 1")
        _check(self.reduction_factor >= 2, "tune.reduction_factor must be >= 2")
        _check(self.metric in ("auto", "weighted") + TUNE_METRICS,
               f"tune.metric must be auto, weighted or one of {', '.join(TUNE_METRICS)}, got {self.metric!r}")
        for key in ("mask_ratio", "ratio_end"):
            r = parse_range(getattr(self, key), f"tune.{key}")
            _check(r is None or (0.0 < r[0] and r[1] < 1.0), f"tune.{key}: a ratio range must lie in (0, 1)")
        for key in ("temperature", "lr"):
            r = parse_range(getattr(self, key), f"tune.{key}")
            _check(r is None or r[0] > 0, f"tune.{key}: the range must be > 0 (log-uniform)")
        if self.metric == "weighted":
            w = self.weight_map()
            _check(bool(w), "tune.metric=weighted needs tune.weights, e.g. 'mlm_accuracy:1,stsb_spearman:1'")

    def weight_map(self) -> dict[str, float]:
        out = {}
        for part in (p.strip() for p in self.weights.split(",") if p.strip()):
            name, _, w = part.partition(":")
            _check(name.strip() in TUNE_METRICS, f"tune.weights: unknown metric {name.strip()!r} "
                   f"(known: {', '.join(TUNE_METRICS)})")
            try:
                out[name.strip()] = float(w or 1.0)
            except ValueError:
                raise ConfigError(f"tune.weights: {part!r} is not metric:weight") from None
        return out


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    nsp: NspConfig = field(default_factory=NspConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    output_dir: str = "outputs"   # exported models and run files go under here

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "validate"):
                v.validate()
        _check(not self.objectives.contrastive or self.contrastive.max_tokens + 2 <= self.data.max_seq_len,
               "contrastive.max_tokens + 2 must be <= data.max_seq_len (the encoder's positions)")
        o = self.objectives
        _check(not (o.contrastive and self.contrastive.start > 0) or o.mlm or o.nsp,
               "contrastive.start > 0 needs another objective to train before it (objectives.mlm)")
        _check(not self.embedding.whiten or self.embedding.whiten_sentences >= 2 * self.model.hidden_size
               or bool(self.model.init_from),
               f"embedding.whiten_sentences must be >= 2 x model.hidden_size ({2 * self.model.hidden_size}) "
               "for a usable covariance")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        """A validated Config from a (possibly partial) dict of sections; ConfigError names the
        first unknown key, wrong type or bad value."""
        return _build(cls, raw).validate()


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


# ---------------------------------------------------------------- loading

def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check ``value`` against ``typ``; ints are accepted for floats. Raises ConfigError."""
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(typ, value, where)
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for t in typing.get_args(typ):
            try:
                return _coerce(value, t, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a {typ}")
    if typ is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):        # YAML 1.1 reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls, raw: dict[str, Any], prefix: str = ""):
    types_ = _field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        valid = ", ".join(sorted(types_))
        raise ConfigError(f"unknown config key '{key}' (valid keys{' in ' + prefix if prefix else ''}: {valid})")
    kwargs = {}
    for name, value in raw.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, types_[name], where)
    return cls(**kwargs)


def resolve_config_path(name_or_path: str, search: Iterable = ()):
    """A config file: ``name_or_path`` itself when it is a path to a YAML file, else
    ``NAME.yaml`` in one of the ``search`` directories (``pathlib.Path`` or
    ``importlib.resources`` traversables)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file '{name_or_path}' does not exist")
        return p
    search = list(search)
    for d in search:
        cand = d / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    shipped = sorted(c.name[:-5] for d in search for c in d.iterdir() if c.name.endswith(".yaml"))
    raise ConfigError(f"no config named '{name_or_path}' (shipped: {', '.join(shipped) or 'none'}; "
                      "or pass a path to a .yaml file)")


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}': expected section.key=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set '{item}': expected section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.split("."), value


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None,
                search: Iterable = ()) -> Config:
    """Load a YAML config (a path, or a name found in ``search``), apply ``section.key=value``
    overrides, validate."""
    raw: dict[str, Any] = {}
    if name_or_path:
        path = resolve_config_path(name_or_path, search)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    for item in overrides or []:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}': '{k}' is not a section")
        node[keys[-1]] = value
    return Config.from_dict(raw)


def config_reference() -> list[tuple[str, str, Any]]:
    """(key, type, default) for every config key, for docs and --help."""
    rows = []
    for f in dataclasses.fields(Config):
        t = _field_types(Config)[f.name]
        if dataclasses.is_dataclass(t):
            for sf in dataclasses.fields(t):
                st = _field_types(t)[sf.name]
                rows.append((f"{f.name}.{sf.name}", getattr(st, "__name__", str(st)), getattr(t(), sf.name)))
        else:
            rows.append((f.name, getattr(t, "__name__", str(t)), getattr(Config(), f.name)))
    return rows
