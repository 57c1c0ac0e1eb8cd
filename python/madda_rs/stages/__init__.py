"""Training stages. A stage is an explicit state (models, optimisers) plus `run_epoch`; the run
loop (:mod:`madda_rs.loop`) drives any stage: evaluation schedule, checkpoints, resume, progress.

Random streams are derived per epoch from the run's seed (:func:`madda_rs.runtime.stream_seed`),
never carried from epoch to epoch, so a stage's state is its tensors alone and a resumed run
draws exactly what an uninterrupted one would. A new training method is one new module here
(a stage class) plus a preset in :mod:`madda_rs.config`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Protocol

import torch

from ..config import TrainConfig


class Stage(Protocol):
    name: str  # 'source', 'target': the key of its history and checkpoint state
    epochs: int

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """Train one epoch; return its record (mean losses and other per-epoch figures)."""
        ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class SourceStageBase:
    """What both source stages share: one model and its optimiser on the labelled source."""

    name = "source"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> List[torch.Tensor]:
    """A shuffled epoch of CPU index batches; the last partial batch is dropped unless it is the only one."""
    perm = torch.randperm(n, generator=gen)
    cut = max(n // batch_size, 1) * batch_size
    return list(perm[: min(cut, n)].split(batch_size))


def adam(params: Any, config: TrainConfig, lr: float) -> torch.optim.Adam:
    params = list(params)
    if config.zero_grad_momentum:
        # PyTorch 0.4 gave every parameter a gradient tensor from the start, so Adam stepped
        # parameters a loss never reached (momentum, zero gradient). Creating them here makes
        # that hold from the first step, whatever grads a copied or reloaded model carries.
        for p in params:
            p.grad = torch.zeros_like(p)
    # fused: one kernel per step instead of ~10 per parameter; Adam was 13% of CPU time unfused
    return torch.optim.Adam(params, lr=lr, betas=tuple(config.betas), fused=True)


def zero_grad(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    # set_to_none=False reproduces PyTorch 0.4, where Adam kept moving zero-grad params by momentum.
    optimizer.zero_grad(set_to_none=not config.zero_grad_momentum)


def mean(values: List[torch.Tensor]) -> float:
    """Mean of per-step scalars, read back once per epoch (a .item() per step syncs a GPU)."""
    return float(torch.stack(values).mean()) if values else 0.0
