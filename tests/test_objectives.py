"""Objectives: the math against hand computations, and the distributed equivalence.

The equivalence test runs the same global batch through real Ray Train DDP with 1 worker (2B rows)
and 2 workers (B rows each): every objective's loss and the averaged gradient must agree, which
holds only if the MLM/NSP normalisation is global and the contrastive negatives are gathered with
their gradients.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_core.config import Config
from ssl_core.masking import IGNORE_INDEX
from ssl_core.objectives.base import WINDOW_KEY, WindowCounts
from ssl_core.objectives import alignment_uniformity, info_nce, mlm_loss, nsp_loss
from ssl_core.encoder import pool


def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.07
    total, correct, cos = info_nce(a, b, tau)
    expect, hits = 0.0, 0
    for i in range(5):
        sims = [float(a[i] @ b[j] / (a[i].norm() * b[j].norm())) for j in range(5)]
        expect += -math.log(math.exp(sims[i] / tau) / sum(math.exp(s / tau) for s in sims))
        hits += int(np.argmax(sims) == i)
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert int(correct) == hits
    # with an offset the positives sit further along the keys (the rank's slice of a global batch)
    keys = torch.cat([torch.randn(3, 8, generator=g), b])
    t2, _, _ = info_nce(a, keys, tau, offset=3)
    assert t2.item() > total.item()          # more negatives, same positives: the loss can only grow


def test_info_nce_temperature_and_perfect_views():
    x = F.normalize(torch.randn(16, 32), dim=-1)
    lo, c, _ = info_nce(x, x, 0.01)
    hi, _, _ = info_nce(x, x, 1.0)
    assert int(c) == 16 and lo.item() < hi.item()
    align, unif = alignment_uniformity(x, x)
    assert align.item() == pytest.approx(0.0, abs=1e-6)
    assert unif.item() < 0                      # log of a mean of exp(-2 d²) < 1
    collapsed = torch.ones(16, 32)
    _, unif_c = alignment_uniformity(collapsed, collapsed)
    assert unif_c.item() == pytest.approx(0.0, abs=1e-5) and unif.item() < unif_c.item()


def test_mlm_loss_is_cross_entropy_at_masked_positions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 11, generator=g)
    y = torch.randint(0, 11, (7,), generator=g)
    total, correct = mlm_loss(logits, y)
    manual = -sum(torch.log_softmax(logits[i], -1)[y[i]] for i in range(7))
    assert total.item() == pytest.approx(manual.item(), rel=1e-5)
    assert int(correct) == int((logits.argmax(-1) == y).sum())


def test_mlm_targets_padded_to_a_few_row_counts():
    """The head sees multiples of 64 rows (a handful of GEMM shapes, not one per batch); the padding
    rows are ignored: same loss and accuracy as on exactly the masked positions."""
    from ssl_core.objectives.mlm import BUCKET, bucketed_targets
    g = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(16, 50)
    shapes = set()
    for p in (0.05, 0.15, 0.15, 0.3, 0.5):
        labels = torch.randint(0, 50, (6, 40), generator=g)
        labels[torch.rand(6, 40, generator=g) >= p] = IGNORE_INDEX
        sel = labels != IGNORE_INDEX
        m = int(sel.sum())
        idx, y = bucketed_targets(labels)
        assert len(idx) == len(y) and len(idx) % BUCKET == 0 and m <= len(idx) < m + BUCKET
        assert torch.equal(idx[:m], sel.reshape(-1).nonzero().squeeze(1)) and torch.equal(y[:m], labels[sel])
        assert bool((y[m:] == IGNORE_INDEX).all())
        shapes.add(len(idx))
        hidden = torch.randn(6, 40, 16, generator=g)
        total, correct = mlm_loss(head(hidden.reshape(-1, 16)[idx]), y)
        ref_total, ref_correct = mlm_loss(head(hidden[sel]), labels[sel])
        assert total.item() == pytest.approx(ref_total.item(), rel=1e-5) and int(correct) == int(ref_correct)
    assert len(shapes) < 5                      # five different mask counts, fewer row counts
    idx, y = bucketed_targets(torch.full((2, 8), IGNORE_INDEX))
    assert len(idx) == len(y) == 0              # nothing masked: nothing padded either


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_sparse_mlm_head_equals_dense_logits(arch):
    from ssl_core.encoder import build_model, encode, mlm_head
    from ssl_core.model import PretrainModule
    cfg = replace(Config(), model=replace(Config().model, arch=arch))
    hf = build_model(cfg.model, 300, 32, 0).eval()
    assert mlm_head(hf) is not None
    x = torch.randint(5, 300, (3, 32))
    sel = torch.rand(3, 32) < 0.15
    sel[0, 1] = True
    with torch.no_grad():
        dense = hf(input_ids=x, attention_mask=torch.ones_like(x)).logits[sel]
        sparse = mlm_head(hf)(encode(hf, x, torch.ones_like(x))[sel])
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)
    # and the training module runs every objective on it, gradients reaching the encoder
    cfg = replace(cfg, objectives=replace(cfg.objectives, nsp=True, contrastive=True))
    module = PretrainModule.from_config(cfg, build_model(cfg.model, 300, 32, 0), 0)
    y = torch.where(sel, x, torch.full_like(x, IGNORE_INDEX))
    loss, m = module({"input_ids": x, "labels": y, "token_type_ids": torch.zeros_like(x),
                      "nsp_label": torch.tensor([0, 1, IGNORE_INDEX]), "view_a": x, "view_b": x.flip(1)})
    loss.backward()
    assert torch.isfinite(loss) and m["mlm_count"] == sel.sum() and m["nsp_count"] == 2
    emb = module.hf.get_input_embeddings().weight.grad
    assert emb is not None and emb.abs().sum() > 0


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_eager_attention_trains_the_same_model_as_sdpa(arch):
    """On CPU the loop trains with eager attention (faster there), on GPU with SDPA: the same
    weights give the same loss and gradients either way, padding included."""
    from ssl_core.encoder import attention_impl, build_model, set_attention
    from ssl_core.model import PretrainModule
    assert attention_impl("auto", "cpu") == "eager" and attention_impl("auto", "cuda") == "sdpa"
    assert attention_impl("sdpa", "cpu") == "sdpa"
    cfg = replace(Config(), model=replace(Config().model, arch=arch, dropout=0.0))
    cfg = replace(cfg, objectives=replace(cfg.objectives, nsp=True, contrastive=True))
    torch.manual_seed(0)
    x = torch.randint(5, 300, (4, 32))
    x[1, 20:] = 0                                               # padding: the mask matters
    y = torch.where(torch.rand(4, 32) < 0.2, x, torch.full_like(x, IGNORE_INDEX))
    y[1, 20:] = IGNORE_INDEX
    batch = {"input_ids": x, "labels": y, "token_type_ids": torch.zeros_like(x),
             "nsp_label": torch.tensor([0, 1, 0, 1]), "view_a": x, "view_b": x.flip(1)}
    out = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(1)
        hf = build_model(cfg.model, 300, 32, 0)
        assert set_attention(hf, impl) == impl
        module = PretrainModule.from_config(cfg, hf, 0)
        loss, _ = module(batch)
        loss.backward()
        out[impl] = (loss.detach(), hf.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(out["eager"][0], out["sdpa"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["eager"][1], out["sdpa"][1], rtol=1e-4, atol=1e-6)


def test_nsp_loss_skips_unlabeled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    labels = torch.tensor([0, 0, IGNORE_INDEX])
    total, correct, n = nsp_loss(logits, labels)
    expect = F.cross_entropy(logits[:2], labels[:2], reduction="sum")
    assert total.item() == pytest.approx(expect.item()) and int(correct) == 1 and int(n) == 2


def test_pooling_modes():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert pool(h, m, "cls").tolist() == h[:, 0].tolist()
    assert pool(h, m, "mean").tolist() == [[1.0, 2.0], [6.0, 7.0]]


# ---------------------------------------------------------------- distributed equivalence
def _module(cfg: Config, vocab: int):
    """The training module of ``cfg`` (pad id 0), initialised from seed 0: the same on every rank."""
    from ssl_core.encoder import build_model
    from ssl_core.model import PretrainModule

    torch.manual_seed(0)
    return PretrainModule.from_config(cfg, build_model(cfg.model, vocab, cfg.data.max_seq_len, 0), 0)


def _rank_slice(config: dict, key: str, columns=None) -> dict:
    """This Ray Train worker's rows of the global batch in ``config`` (sliced by ``key``'s length)."""
    import ray.train

    ctx = ray.train.get_context()
    r, w = ctx.get_world_rank(), ctx.get_world_size()
    n = len(config["batch"][key]) // w
    return {k: torch.as_tensor(v[r * n:(r + 1) * n]) for k, v in config["batch"].items()
            if columns is None or k in columns}


def _probe(config: dict) -> None:
    """One forward/backward of the global batch's slice on each rank; reports global losses and a
    fingerprint of the DDP-averaged gradient."""
    import ray.train

    from pipelines.train import prepare_model

    cfg = Config.from_dict(config["cfg"])
    module = _module(cfg, config["vocab"])
    world = ray.train.get_context().get_world_size()
    model = prepare_model(module, cfg, torch.device("cpu"), world)    # as the Train workers do
    batch = _rank_slice(config, "input_ids")
    with torch.no_grad():                       # each loss counts its global batch when it runs
        plain, _ = model(batch)
    # the training loop's way: all counts summed over ranks in one asynchronous all-reduce
    counts = WindowCounts({n: o.count({k: v.numpy() for k, v in batch.items()})
                           for n, o in module.objectives.items()}, reduce=world > 1)
    loss, m = model({**batch, WINDOW_KEY: counts})
    loss.backward()
    counts.settle()
    sums = torch.tensor([float(m[k]) for k in ("mlm_loss", "mlm_count", "nsp_loss", "nsp_count",
                                                "contrastive_loss", "contrastive_count")],
                        dtype=torch.float64)
    torch.distributed.all_reduce(sums)
    grads = torch.cat([p.grad.flatten().double() for p in module.parameters() if p.grad is not None])
    proj = torch.randn(grads.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = {"mlm": float(sums[0] / sums[1]), "nsp": float(sums[2] / sums[3]),
           "con": float(sums[4] / sums[5]), "grad_norm": float(grads.norm()),
           "grad_proj": float(grads @ proj), "grad_sync": getattr(model, "grad_sync", None),
           "loss": float(loss), "plain_loss": float(plain), "counts_reduced": counts.reduced}
    if ray.train.get_context().get_world_rank() == 0:   # Train V2 keeps metrics only with checkpoints: to a file
        import json
        with open(config["out"], "w") as f:
            json.dump(res, f)
    ray.train.report(res)


@pytest.fixture(scope="module")
def global_batch(tmp_path_factory, wikitext):
    from ssl_core.examples import ExampleBuilder
    from ssl_core.masking import row_keys
    from ssl_core.tokenizer import train_wordpiece

    lines = [l.strip() for l in wikitext.read_text(encoding="utf-8").splitlines() if len(l.strip()) > 200]
    tok = train_wordpiece(lines[:400], tmp_path_factory.mktemp("tok"), 600, True, 2, model_max_length=48)
    cfg = Config()
    cfg = replace(cfg, objectives=replace(cfg.objectives, nsp=True, contrastive=True),
                  contrastive=replace(cfg.contrastive, view_a="delete:0.1", view_b="crop:0.8"),
                  model=replace(cfg.model, hidden_size=32, num_layers=2, num_heads=2,
                                intermediate_size=64, dropout=0.0),
                  data=replace(cfg.data, max_seq_len=48))
    b = ExampleBuilder(cfg, str(tok))
    rows, _ = b.build([f"d{i}" for i in range(60)], lines[:60], epoch=0)
    rows = {k: v[:16] for k, v in rows.items()}
    assert len(rows["input_ids"]) == 16 and (rows["nsp_label"] != IGNORE_INDEX).sum() >= 4
    rows["input_ids"], rows["labels"] = b.masker().keyed(
        rows["input_ids"], seed=0, keys=row_keys(rows["input_ids"], 0, rows["epoch"]),
        word_start=rows["word_start"].astype(bool))
    batch = {k: rows[k].astype(np.int64) for k in ("input_ids", "labels", "token_type_ids",
                                                   "nsp_label", "view_a", "view_b")}
    return cfg, b.vocab_size, batch


@pytest.mark.integration
def test_two_workers_equal_one_worker_on_the_global_batch(ray_session, global_batch, tmp_path):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg, vocab, batch = global_batch
    out = {}
    for w in (1, 2):
        path = tmp_path / f"probe{w}.json"
        TorchTrainer(_probe, train_loop_config={"cfg": cfg.to_dict(), "vocab": vocab, "batch": batch,
                                                "out": str(path)},
                     scaling_config=ScalingConfig(num_workers=w, resources_per_worker={"CPU": 1}),
                     run_config=RunConfig(name=f"equiv{w}", storage_path=str(tmp_path))).fit()
        out[w] = json.loads(path.read_text())
    one, two = out[1], out[2]
    for k in ("mlm", "nsp", "con"):
        assert math.isfinite(one[k]) and one[k] > 0
        assert two[k] == pytest.approx(one[k], rel=1e-4), k
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)
    assert two["grad_proj"] == pytest.approx(one["grad_proj"], rel=1e-3, abs=1e-6)
    assert one["grad_sync"] is None and two["grad_sync"] == "shared memory"   # train.ddp_shm, one host
    for r in (one, two):             # the async window counts give the loss of the blocking ones
        assert r["loss"] == pytest.approx(r["plain_loss"], rel=1e-5)
    assert not one["counts_reduced"] and two["counts_reduced"]


def _contrastive_only(config: dict) -> None:
    """Three DDP steps with MLM off on a model that has an MLM head (a contrastive stage on an MLM
    checkpoint); rank 0 writes which parameters moved."""
    import ray.train

    from pipelines.train import prepare_model
    from ssl_core.encoder import mlm_head

    cfg = Config.from_dict(config["cfg"])
    module = _module(cfg, config["vocab"])
    hf = module.hf
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    model = prepare_model(module, cfg, torch.device("cpu"), ray.train.get_context().get_world_size())
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = _rank_slice(config, "view_a", ("view_a", "view_b"))
    losses = []
    for _ in range(3):              # DDP's unused-parameter error comes at the second step
        loss, _m = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    head = {id(p) for p in mlm_head(hf).parameters()}
    embeddings = {id(p) for p in hf.base_model.parameters()}
    moved = {n: not torch.equal(p.detach(), before[n]) for n, p in module.named_parameters()}
    res = {"losses": losses,
           "head_only_moved": [n for n, p in module.named_parameters()
                               if id(p) in head and id(p) not in embeddings and moved[n]],
           "encoder_moved": sum(moved[n] for n, p in module.named_parameters() if id(p) in embeddings),
           "encoder_params": len(embeddings)}
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            json.dump(res, f)
    ray.train.report({"loss": losses[-1]})


@pytest.mark.integration
def test_contrastive_stage_without_mlm_trains_under_ddp(ray_session, global_batch, tmp_path):
    """MLM off on a masked-LM model: its head is left out of training (DDP would fail on trainable
    parameters that no loss reaches), the encoder trains on two workers."""
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg, vocab, batch = global_batch
    cfg = replace(cfg, objectives=replace(cfg.objectives, mlm=False, nsp=False, contrastive=True))
    path = tmp_path / "contrastive_only.json"
    TorchTrainer(_contrastive_only, train_loop_config={"cfg": cfg.to_dict(), "vocab": vocab,
                                                       "batch": batch, "out": str(path)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name="contrastive_only", storage_path=str(tmp_path))).fit()
    res = json.loads(path.read_text())
    assert all(math.isfinite(x) for x in res["losses"]) and res["losses"][-1] < res["losses"][0]
    assert res["head_only_moved"] == []
    assert res["encoder_moved"] == res["encoder_params"] > 0


def test_contrastive_joins_at_its_start(global_batch):
    """``contrastive.start``: before that share of training the views are dropped (no pass over
    them, no contrastive loss or metrics: the step is MLM's alone); after it both train, with the
    encoder's hidden dropout at ``contrastive.dropout`` (SimCSE's noise), attention dropout kept."""
    from ssl_core.config import ConfigError

    cfg, vocab, batch = global_batch
    cfg = replace(cfg, objectives=replace(cfg.objectives, nsp=False),
                  contrastive=replace(cfg.contrastive, start=0.5, dropout=0.1),
                  model=replace(cfg.model, dropout=0.0, attention_dropout=0.0))
    both = _module(cfg, vocab)
    mlm_only = _module(replace(cfg, objectives=replace(cfg.objectives, contrastive=False)), vocab)
    con = both.objectives["contrastive"]
    early = {k: v.copy() for k, v in batch.items()}
    assert con.prepare(early, 0.2) == {} and len(early["view_a"]) == len(early["view_b"]) == 0
    assert both.stream_tokens(early) == pytest.approx(mlm_only.stream_tokens(early))
    tensors = {k: torch.as_tensor(v) for k, v in early.items()}
    loss, sums = both(tensors)
    ref, _ = mlm_only(tensors)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert con.summarize({k: float(v) for k, v in sums.items()}) == {}
    drops = [m for m in both.hf.modules() if isinstance(m, torch.nn.Dropout)]
    assert {m.p for m in drops} == {0.0}
    late = {k: v.copy() for k, v in batch.items()}
    con.prepare(late, 0.5)
    assert sorted(m.p for m in drops) == [0.0] * 2 + [0.1] * (len(drops) - 2)   # 2 attention layers
    assert len(late["view_a"]) == len(batch["view_a"]) > 0
    loss, sums = both({k: torch.as_tensor(v) for k, v in late.items()})
    assert float(sums["contrastive_count"]) == len(batch["view_a"]) and float(loss.detach()) > float(ref.detach())
    with pytest.raises(ConfigError, match="contrastive.start"):
        replace(cfg, objectives=replace(cfg.objectives, mlm=False)).validate()
    with pytest.raises(ConfigError, match="contrastive.start"):
        replace(cfg, contrastive=replace(cfg.contrastive, start=1.0)).validate()
