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
import torch.nn.functional as F

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


# Augmentation ranges: rotations of up to 10 degrees, shifts of up to 2 pixels at 28x28, and
# scalings by 0.9-1.1: the variation between handwritten digit sets, short of changing a digit.
AUG_DEGREES, AUG_SHIFT, AUG_SCALE = 10.0, 2.0 / 28, 0.1


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random affine warp per image, drawn from `gen` (CPU) and applied to the whole batch at
    once on its device (affine_grid + grid_sample). torchvision's RandomAffine draws one warp per
    call, so a batch would either share one or cost a Python loop per image."""
    n = len(images)
    angle, shift_x, shift_y, scale = (torch.rand(4, n, generator=gen) * 2 - 1).to(images.device)
    angle = angle * (AUG_DEGREES * torch.pi / 180)
    scale = 1 + scale * AUG_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # grid coordinates run from -1 to 1 across the image, so a shift of s of the width is 2s
    theta = torch.stack([torch.stack([cos, -sin, shift_x * 2 * AUG_SHIFT], 1),
                         torch.stack([sin, cos, shift_y * 2 * AUG_SHIFT], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # border padding repeats the edge pixels: the background of a digit image
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
