"""Where a run executes: the device, the thread count and determinism, and the processes of a
torchrun job (:class:`Parallel`)."""

from __future__ import annotations

import atexit
import os
from typing import Any, Dict, Optional

import torch

import madda_rs


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def configure_threads(threads: Optional[int], deterministic: bool, processes: int = 1) -> int:
    """Set torch's thread count and determinism for this process; return the thread count used.

    Deterministic mode turns on torch's deterministic algorithms (on the CPU this mostly makes
    the scatter-add in the backward of indexing serial-order) and pins the thread count, so two
    runs of one command on one machine agree bit for bit. The native core is deterministic at any
    thread count."""
    threads = threads or max(madda_rs.default_threads() // processes, 1)  # processes share the cores
    torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # setting it imports torch's compiler: 1-2 s
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    return threads


class Parallel:
    """Data parallelism over the processes of a torchrun job (one process: every method is a no-op).

    Every rank draws the same batches from the same seed streams and takes its shard of each
    batch, so the effective batch and the learning rate are the single process's. Gradients are
    averaged over ranks (weighted by shard size) before each optimiser step: the arithmetic of
    DDP, done per parameter because stage 2 runs the encoder, the head and the discriminator in
    separate passes with parameters frozen in between, which DDP's reducer does not follow.
    Rank 0 alone evaluates, prints and writes the run folder."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> "Parallel":
        """Join the torchrun job described by the environment (WORLD_SIZE > 1), else one process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        # Imported before the group exists: its functions default to group=group.WORLD, evaluated
        # at import, so a first import after init_process_group (torch.use_deterministic_algorithms
        # pulls it in through torch._inductor) captures the group and keeps gloo's worker threads
        # alive past destroy_process_group. A worker then frees a tensor during interpreter
        # shutdown, cannot take the GIL, and aborts the rank ("terminate called without an active
        # exception") after a finished run.
        import torch.distributed.nn.functional  # noqa: F401

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            atexit.register(cls.shutdown)  # whoever joins the group leaves it (library or CLI)
        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's part of a batch of indices, and its share of the batch's rows."""
        if self.world == 1:
            return batch, 1.0
        part = torch.tensor_split(batch, self.world)[self.rank]
        return part, len(part) / len(batch)

    def sync_grads(self, params: Any, share: float) -> None:
        """Replace each gradient by the share-weighted sum over ranks: the whole batch's gradient.
        One all-reduce of all gradients flattened (DDP's bucket, as one): per-parameter calls
        cost more than LeNet's arithmetic."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(share)
        dist.all_reduce(flat)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def broadcast(self, module: torch.nn.Module) -> None:
        """Start every rank from rank 0's weights."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in module.state_dict().values():
            dist.broadcast(t, 0)

    def mean(self, record: Dict[str, float]) -> Dict[str, float]:
        """Average an epoch's figures over ranks, so every rank holds (and checks) the same record."""
        if self.world == 1 or not record:
            return record
        import torch.distributed as dist

        keys = sorted(record)
        values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {k: float(v) / self.world for k, v in zip(keys, values.tolist())}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop request must stop all ranks together)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    @staticmethod
    def shutdown() -> None:
        """Leave the torchrun job's process group, if one was joined. Left to interpreter
        teardown, gloo's threads can be destroyed while a peer still talks to them, and a rank
        aborts ("terminate called without an active exception") after the run has finished."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# The CPU features that decide which kernels run (the native kNN, oneDNN's bf16 paths).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (model name, family, flags, ...); empty where
    there is none (not Linux)."""
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def machine_record(device: torch.device) -> Dict[str, Any]:
    """What ran a run, for metrics.json: the CPU's model and kernel-relevant flags, core count,
    torch, CUDA and madda_rs versions, the GPU's name and peak memory on CUDA, and the native kNN's
    kernel."""
    cpu, flags, info = "unknown", set(), cpu_info()
    if info:
        # the model name alone may not tell two CPUs apart ("Intel(R) Xeon(R) Processor")
        name, family, model = info.get("model name", "unknown"), info.get("cpu family", "?"), info.get("model", "?")
        cpu = f"{name} (family {family}, model {model})"
        flags = set(info.get("flags", "").split())
    record: Dict[str, Any] = {
        "cpu": cpu, "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "madda_rs": madda_rs.__version__,
        "knn_kernel": madda_rs.knn_kernel(),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        # the most GPU memory torch's tensors held at once in this process (the run's peak)
        record["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return record


__all__ = ["cpu_info", "machine_record", "Parallel", "resolve_device", "configure_threads"]
