"""The arithmetic a run trains in (``--precision``): float32, or autocast to bfloat16 / float16.

Reduced precision covers the networks' forward passes during training only: their outputs come
back as float32, so losses, distances and the triplet margin are computed in float32, and every
evaluation, saved model, ``predict`` and ``export`` stays float32. float16 needs a gradient scaler
(its range is narrow); bfloat16 has float32's range and needs none.

What each device runs: a CPU runs bf16 where it has the instructions for it (AVX512-BF16 or
AMX-BF16; elsewhere oneDNN emulates it, slower than float32); CUDA runs fp16, and bf16 where the
GPU has it (Ampere and later).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Dict, Optional, Tuple

import torch

from ..config import PRECISIONS
from .processes import cpu_info

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> set:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return set(cpu_info().get("flags", "").split())


def supported(device: torch.device) -> Tuple[str, ...]:
    """The precisions `device` runs natively."""
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported(including_emulation=False) \
            else ("fp32", "fp16")
    return ("fp32", "bf16") if cpu_flags() & {"avx512_bf16", "amx_bf16"} else ("fp32",)


def resolve_precision(precision: Optional[str], device: torch.device, bf16_by_default: bool = True) -> str:
    """The precision a run trains in: the one asked for, else the device's default: bf16 on a CPU
    that runs it natively when the backbone's ``cpu_bf16_default`` says so (LeNet and resnet-cifar
    measured 1.1-1.7x faster at equal accuracy, on AMX and on AVX512-BF16; EfficientNet-Lite0 2x
    slower on Zen 4; docs/speed.md), fp32 elsewhere (CUDA's half precisions are asked for, not assumed)."""
    if precision is not None:
        return precision
    if device.type != "cpu" or "bf16" not in supported(device):
        return "fp32"
    return "bf16" if bf16_by_default else "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision `device` cannot run, naming the device and what it supports."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    runs = supported(device)
    if precision not in runs:
        what = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
        why = "" if device.type == "cuda" or precision == "fp16" else " (it has neither AVX512-BF16 nor AMX-BF16)"
        raise ValueError(f"--precision {precision}: {what}{why} runs {', '.join(runs)}")


class Precision:
    """Autocast for the forward passes, and the gradient scaling fp16 needs, for one stage.

    A stage computes ``out = precision.forward(module, x)`` and steps with
    ``precision.backward(loss, optimizer)`` then ``precision.step(optimizer)``; in fp32 these are
    exactly ``module(x)``, ``loss.backward()`` and ``optimizer.step()``."""

    def __init__(self, name: Optional[str], device: torch.device, bf16_by_default: bool = True) -> None:
        name = resolve_precision(name, device, bf16_by_default)  # None (a stage built outside train()): the default
        self.name, self.device = name, device
        self.dtype = _DTYPES[name]
        # one scaler per optimiser: the discriminator's and the encoder's steps skip and rescale apart
        self._scalers: Dict[int, Any] = {}

    def autocast(self) -> ContextManager[Any]:
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def forward(self, module: Any, *args: Any) -> torch.Tensor:
        """``module(*args)`` under autocast, returned as float32."""
        if self.name == "fp32":
            return module(*args)
        with self.autocast():
            out = module(*args)
        return out.float()

    def _scaler(self, optimizer: torch.optim.Optimizer) -> Any:
        if self.name != "fp16":
            return None
        if id(optimizer) not in self._scalers:
            self._scalers[id(optimizer)] = torch.amp.GradScaler(self.device.type)
        return self._scalers[id(optimizer)]

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        scaler = self._scaler(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        scaler = self._scaler(optimizer)
        if scaler is None:
            optimizer.step()
        else:  # skips the step when the scaled gradients overflowed, then adjusts the scale
            scaler.step(optimizer)
            scaler.update()


__all__ = ["PRECISIONS", "Precision", "check_precision", "resolve_precision", "supported", "cpu_flags"]
