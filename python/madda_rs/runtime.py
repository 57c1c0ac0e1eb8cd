"""Where and how a run executes: device, threads and determinism, named random streams, and the
run folder (config, metrics, checkpoints; every write atomic)."""

from __future__ import annotations

import atexit
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import torch

import madda_rs

from .config import TrainConfig

# One seed feeds every random stream of a run; each stream has a name and a fixed index here, so
# streams never collide and one can change without moving the others. 'subset' is drawn from
# --subset-seed when given, so the data and the training randomness can be varied apart.
SEED_STREAMS = {
    "subset": 0,  # which training images the ADDA protocol keeps
    "init_source": 1,  # source model weights
    "init_discriminator": 2,  # discriminator weights (the target model starts as the source model)
    "batches_source": 3,  # stage 1 batch order
    "triplets": 4,  # stage 1 triplet sampling (negatives)
    "batches_target": 5,  # stage 2 batch order
    "centers": 6,  # KMeans centres (the 'official' preset)
    "holdout": 7,  # which left-out training images score a run (domains.HOLDOUT_IMAGES)
    "augment": 8,  # random warps of training batches (TrainConfig.augment)
}

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.json"
CHECKPOINT_FILE, PROGRESS_FILE = "checkpoint.pt", "progress.json"  # progress.json: the checkpoint's stage and epoch
SELECTED_FILE = "selected.pt"  # the target model a label-free score picked (TrainConfig.select)
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, PROGRESS_FILE, "source.pt", "target.pt", SELECTED_FILE)


def stream_seed(seed: int, stream: str, *extra: int) -> int:
    """A 63-bit seed for `stream` (a key of :data:`SEED_STREAMS`), optionally per step (`extra`)."""
    words = np.random.SeedSequence([seed, SEED_STREAMS[stream], *extra]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def torch_generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, stream))


@contextmanager
def seeded_init(seed: int, stream: str) -> Iterator[None]:
    """Build modules inside this block to draw their initial weights from `stream` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def configure_threads(config: TrainConfig, processes: int = 1) -> int:
    """Set torch's thread count and determinism for this process; return the thread count used.

    Deterministic mode turns on torch's deterministic algorithms (on the CPU this mostly makes
    the scatter-add in the backward of indexing serial-order) and pins the thread count, so two
    runs of one command on one machine agree bit for bit. The native core is deterministic at any
    thread count."""
    threads = config.threads or max(madda_rs.default_threads() // processes, 1)  # processes share the cores
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(config.deterministic, warn_only=False)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    return threads


class RunFolder:
    """A run's folder: config.json, metrics.json, checkpoint.pt (+ progress.json), source.pt, target.pt."""

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE))

    def check_usable(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before any work, a folder that cannot be written or already holds a run."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a folder")
        if resume:
            if not (self.path / CHECKPOINT_FILE).is_file():
                raise ValueError(f"cannot resume: {self.path / CHECKPOINT_FILE} does not exist")
        elif self.holds_run() and not overwrite:
            raise ValueError(f"{self.path} already holds a run; choose another --out, or pass --resume or --overwrite")
        probe = self.path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write the run folder {self.path}: {probe} is not writable")

    def create(self, overwrite: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)

    def write_json(self, name: str, values: Dict[str, Any]) -> None:
        with self._atomic(name) as tmp:
            tmp.write_text(json.dumps(values, indent=2) + "\n")

    def read_json(self, name: str) -> Dict[str, Any]:
        return json.loads((self.path / name).read_text())

    def save(self, name: str, obj: Any) -> None:
        """torch.save through a temporary file and a rename: a kill mid-save keeps the old file."""
        with self._atomic(name) as tmp:
            torch.save(obj, tmp)

    def load(self, name: str, device: torch.device | str = "cpu") -> Any:
        # weights_only=False: checkpoints hold RNG states and history, written by this package
        return torch.load(self.path / name, map_location=device, weights_only=False)

    @contextmanager
    def _atomic(self, name: str) -> Iterator[Path]:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, self.path / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)



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
