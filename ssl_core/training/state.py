"""The components of one training worker, built once: tokenizer-derived builder, encoder, training
module (encoder + objectives), optimizer, precision, FLOP counts and the device's measured peak.

    ts = build_state(job, device)          # then ts.model = session.prepare(ts.module)
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch

from ssl_core.config import Config
from ssl_core.encoder import attention_impl, bf16_stream, build_model, set_attention, use_cpu_dropout
from ssl_core.examples import ExampleBuilder
from ssl_core.model import PretrainModule
from ssl_core.perf import choose_dtype, encoder_flops, keep_freed_memory, measure_peak_flops
from ssl_core.training.job import TrainJob


@dataclass
class Progress:
    """Where a run is: saved in every checkpoint as ``trainer_state.json``."""
    step: int = 0              # optimizer steps done
    batches: int = 0           # micro-batches consumed by each worker (the data position)
    elapsed: float = 0.0       # seconds of training (a resumed run continues the clock)
    tokens: float = 0.0        # tokens the encoder processed, all workers
    epoch: int = 0             # epoch of the newest batch

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    job: TrainJob
    builder: ExampleBuilder
    module: PretrainModule             # encoder + objectives (what checkpoints hold)
    opt: torch.optim.Optimizer
    device: torch.device
    dtype: torch.dtype                 # autocast dtype (float32 = none)
    attention: str
    flops_per_token: float             # training FLOPs per token through the encoder
    flops_per_prediction: float        # ... per predicted token in the MLM head
    peak_flops: float                  # measured GEMM FLOP/s of this device in ``dtype``
    rank: int = 0
    world: int = 1
    model: torch.nn.Module | None = None   # what the step calls: module, or its DDP/compiled wrapper
    progress: Progress = field(default_factory=Progress)

    @property
    def cfg(self) -> Config:
        return self.job.cfg

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def build_state(job: TrainJob, device: torch.device, rank: int = 0, world: int = 1,
                measure_peak: bool = True) -> TrainState:
    """Everything a worker trains with, on ``device``; the model is initialised from
    ``train.seed`` (the same on every rank: DDP then starts from identical weights)."""
    cfg = job.cfg
    tc = cfg.train
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
        keep_freed_memory()
    torch.manual_seed(tc.seed)
    builder = ExampleBuilder(cfg, job.tokenizer_dir)
    pad = builder.sp["pad"]
    hf = build_model(cfg.model, builder.vocab_size, cfg.data.max_seq_len, pad)
    attn = set_attention(hf, attention_impl(cfg.model.attention, device.type))
    if device.type == "cpu":
        use_cpu_dropout(hf)
    module = PretrainModule.from_config(cfg, hf, pad, builder).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                            fused=device.type in ("cuda", "cpu") or None)
    dtype = choose_dtype(tc.precision, device)
    if device.type == "cpu" and dtype == torch.bfloat16 and tc.bf16_stream:
        bf16_stream(hf)
    f_tok, f_pred = encoder_flops(hf.config, cfg.data.max_seq_len)
    peak = measure_peak_flops(device, dtype) if measure_peak else float("nan")
    return TrainState(job, builder, module, opt, device, dtype, attn, f_tok, f_pred, peak,
                      rank, world, model=module)
