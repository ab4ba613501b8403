"""DDP on CPU workers of one host: gradients averaged through shared memory instead of gloo.

gloo's allreduce between processes of one machine goes through TCP loopback: every byte is
copied into and out of the kernel twice, and on CPU workers those copies take the cores the
step computes on. Here each rank copies a bucket into its slot of a file in ``/dev/shm`` mapped
by every rank, sums its share of the bucket over all slots, and copies the sums back: three
memory passes and two small gloo barriers per bucket. A 22 MB bucket (the default model's
gradients) between two one-thread workers: 8-9 ms against gloo's 16-18 ms (2026-12-01), and the
same sums (two ranks add in the same order; more ranks add in rank order, as gloo's ring does
not, so the last bits may differ).

    SharedMemoryAllReduce.unusable(world, nbytes)          # why not (None: it can), before wrapping
    hook = SharedMemoryAllReduce.attach(ddp_model, world)   # None: not usable here (gloo kept)

``pipelines.train.prepare_model`` asks first whether all gradients fit and, if so, makes DDP put
them in one bucket: reduced while the step waits, one bucket syncs the workers once per step.

The file is unlinked as soon as every rank has mapped it: nothing is left behind whatever
happens to the processes. Used only where every rank runs on the same host, on CPU, and
``/dev/shm`` has room (``train.ddp_shm``).
"""
from __future__ import annotations

import os
import secrets
import socket
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

SHM_DIR = Path("/dev/shm")


def _host_id() -> str:
    """This machine as seen from this process: host name and boot id (one host, one kernel)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


class SharedMemoryAllReduce:
    """A DDP communication hook averaging each gradient bucket through a shared-memory file."""

    def __init__(self, rank: int, world: int, capacity: int, path: Path):
        self.rank, self.world, self.capacity, self.path = rank, world, capacity, path
        shm = torch.from_file(str(path), shared=True, size=(world + 1) * capacity, dtype=torch.float32)
        self.slots = shm[:world * capacity].view(world, capacity)
        self.result = shm[world * capacity:]
        self.buckets = self.pieces = 0                 # reduced so far (a bucket may be in pieces)

    @staticmethod
    def unusable(world: int, nbytes: int, min_free: float = 2.0) -> str | None:
        """Why ``nbytes`` of shared staging cannot serve these ``world`` ranks (None: it can): not one
        host, or ``/dev/shm`` without ``min_free`` times the room. A collective: every rank must
        call it, and all get the same answer."""
        why = None
        if not SHM_DIR.is_dir() or not os.access(SHM_DIR, os.W_OK):
            why = f"{SHM_DIR} is not writable"
        else:
            st = os.statvfs(SHM_DIR)
            if st.f_bavail * st.f_frsize < min_free * nbytes:
                why = (f"{SHM_DIR} has {st.f_bavail * st.f_frsize / 2**20:,.0f} MiB free, "
                       f"{min_free * nbytes / 2**20:,.0f} MiB wanted")
        seen: list = [None] * world                      # (host, why not here) of every rank
        dist.all_gather_object(seen, (_host_id(), why))
        hosts = {h for h, _ in seen}
        if len(hosts) > 1:
            return f"workers on {len(hosts)} hosts"
        whys = [w for _, w in seen]
        return next((w for w in whys if w), None)

    @classmethod
    def attach(cls, model: torch.nn.Module, world: int, min_free: float = 2.0,
               say=None) -> "SharedMemoryAllReduce | None":
        """Register the hook on ``model`` (a DDP module) when all ``world`` ranks share this host and
        ``/dev/shm`` has ``min_free`` times the staging size free; every rank must call this (it
        runs collectives) and all get the same answer. Returns the hook, or None (gloo kept)."""
        rank = dist.get_rank()
        params = [p for p in model.parameters() if p.requires_grad]
        # DDP fills a bucket until it reaches bucket_cap_mb: at most the cap plus one parameter
        cap = getattr(model, "bucket_bytes_cap", 25 * 2**20) // min(p.element_size() for p in params)
        capacity = min(cap + max(p.numel() for p in params), sum(p.numel() for p in params))
        need = (world + 1) * capacity * 4
        why = cls.unusable(world, need, min_free)
        # every rank makes the same collective calls in the same order, whatever fails where
        shared = [None, None]                            # file name, token rank 0 writes into it
        if why is None and rank == 0:
            shared = [f"sslpipe-grads-{uuid.uuid4().hex}", [float(secrets.randbelow(2**20)) for _ in range(8)]]
            try:
                with open(SHM_DIR / shared[0], "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, need)  # pages reserved now, not at a write (SIGBUS)
            except OSError as e:
                why = f"cannot create a file in {SHM_DIR}: {e}"
                (SHM_DIR / shared[0]).unlink(missing_ok=True)
                shared = [None, None]
        dist.broadcast_object_list(shared, src=0)
        hook = None
        if shared[0] is not None:
            path = SHM_DIR / shared[0]
            try:
                try:
                    hook = cls(rank, world, capacity, path)
                except (OSError, RuntimeError) as e:
                    why = f"cannot map {path}: {e}"
                if rank == 0 and hook is not None:       # a token every rank must read back
                    hook.result[:8].copy_(torch.tensor(shared[1]))
                dist.barrier()
                ok = torch.tensor([1.0 if hook is not None and hook.result[:8].tolist() == shared[1] else 0.0])
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            finally:                                     # also when a rank died in between
                if rank == 0:
                    path.unlink(missing_ok=True)         # mapped by every rank: freed when they exit
            if ok.item() < 1.0:
                why, hook = why or "the workers do not see one /dev/shm", None
        if hook is None:
            if rank == 0 and say is not None and why:
                say(f"gradients averaged by gloo allreduce ({why})")
            return None
        model.register_comm_hook(hook, _average)
        if rank == 0 and say is not None:
            say(f"gradients averaged through shared memory ({world} workers on this host, "
                f"{need / 2**20:,.0f} MiB in {SHM_DIR}) instead of gloo's TCP loopback (train.ddp_shm)")
        return hook


def _average(self: SharedMemoryAllReduce, bucket):   # DDP checks a hook's annotations as objects: none
    """The communication hook: ``self`` is the state it was registered with. A bucket larger than
    the staging area (DDP's first iteration puts every gradient in one) goes through in pieces."""
    buf = bucket.buffer()
    flat = buf.view(-1)
    w, r = self.world, self.rank
    for start in range(0, flat.numel(), self.capacity):
        part = flat[start:start + self.capacity]
        n = part.numel()
        self.slots[r, :n].copy_(part)
        dist.barrier()                             # every rank's piece is in its slot
        lo, hi = r * n // w, (r + 1) * n // w
        if hi > lo:
            out = self.result[lo:hi]
            if w == 2:
                torch.add(self.slots[0, lo:hi], self.slots[1, lo:hi], out=out)
            else:
                torch.sum(self.slots[:, lo:hi], dim=0, out=out)
            out.div_(w)
        dist.barrier()                             # every share summed (slots free for the next)
        part.copy_(self.result[:n])
        self.pieces += 1
    self.buckets += 1
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(buf)
    return fut
