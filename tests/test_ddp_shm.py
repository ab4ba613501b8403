"""DDP gradients averaged through shared memory (``ssl_core.training.ddp``), in two real processes
joined by a gloo process group (no Ray: the hook is torch only; the Ray path runs it in
``test_objectives``' two-worker equivalence test and the CLI pretrain test).

Run as a script, this file is one worker: ``python test_ddp_shm.py RANK PORT OUT``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 3


def _worker(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ssl_core.training.ddp import SHM_DIR, SharedMemoryAllReduce

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    said: list[str] = []

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(6000, 64), torch.nn.Flatten(),
                                   torch.nn.Linear(64 * 4, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))

    models = {}
    for name in ("gloo", "shm"):
        # several buckets a step: the embedding (1.5 MB) is larger than the first bucket (1 MB)
        m = DDP(net(), gradient_as_bucket_view=True, bucket_cap_mb=0.1)
        hook = SharedMemoryAllReduce.attach(m, 2, say=said.append) if name == "shm" else None
        models[name] = (m, torch.optim.SGD(m.parameters(), lr=0.5), hook)
    left = sorted(p.name for p in SHM_DIR.glob("sslpipe-grads-*"))
    refused = SharedMemoryAllReduce.attach(DDP(net()), 2, min_free=1e15, say=said.append)

    g = torch.Generator().manual_seed(100 + rank)          # each rank its own data
    hand_diff = 0.0
    for _ in range(STEPS):
        x = torch.randint(0, 6000, (16, 4), generator=g)
        y = torch.randint(0, 8, (16,), generator=g)
        # by hand: this rank's own gradient at the current weights, gathered from both and averaged
        ref = net()
        ref.load_state_dict(models["shm"][0].module.state_dict())
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        avg = {}
        for n, p in ref.named_parameters():
            both = [torch.zeros_like(p.grad) for _ in range(2)]
            dist.all_gather(both, p.grad)
            avg[n] = (both[0] + both[1]) / 2
        for name, (m, opt, _) in models.items():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            if name == "shm":
                hand_diff = max([hand_diff] + [float((p.grad - avg[n]).abs().max())
                                               for n, p in m.module.named_parameters()])
            opt.step()
    gloo = {n: p.detach() for n, p in models["gloo"][0].module.named_parameters()}
    shm = {n: p.detach() for n, p in models["shm"][0].module.named_parameters()}
    res = {"hand_diff": hand_diff, "max_diff": max(float((gloo[n] - shm[n]).abs().max()) for n in gloo),
           "moved": max(float((shm[n] - p.detach()).abs().max())
                        for n, p in net().named_parameters()),
           "buckets": models["shm"][2].buckets if models["shm"][2] else 0,
           "pieces": models["shm"][2].pieces if models["shm"][2] else 0,
           "left": left, "refused": refused is None, "said": said}
    Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this OS")
def test_shared_memory_average_equals_gloo_allreduce(tmp_path):
    port = _free_port()
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), str(tmp_path / f"r{r}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
    for r in (r0, r1):
        # gloo divides before summing, the hook after: the same average up to the last bits
        assert r["hand_diff"] < 1e-6, r                 # the averaged gradient, every step
        assert r["max_diff"] < 1e-6, r
        assert r["moved"] > 1e-3, r                      # the steps did change the weights
        assert r["buckets"] >= STEPS, r                  # every step's buckets through the hook,
        assert r["pieces"] > r["buckets"], r             # one (DDP's first, all in one) in pieces
        assert r["left"] == [], r                        # the file is unlinked once mapped
        assert r["refused"], r                           # too little room in /dev/shm: gloo kept
    assert any("through shared memory (2 workers on this host" in s for s in r0["said"]), r0["said"]
    assert any("gradients averaged by gloo allreduce (/dev/shm has" in s for s in r0["said"]), r0["said"]
    assert r1["said"] == []                              # rank 0 speaks for all


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
