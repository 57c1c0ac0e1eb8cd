"""The embedding network (a backbone, then ReLU and a linear head) and the discriminator, and the
one spec that rebuilds a model (M-ADDA, Section 3; the official code's shapes with LeNet).

Every consumer builds models here: training, ``--resume``, ``load_run``/``predict``, ``export``
and the peers. A model file records :meth:`EmbeddingNet.spec`; :func:`build_model` rebuilds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from .backbones import Backbone, build_backbone

MNIST_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a network: the backbone (a registered name, or FILE.py:NAME / MODULE:NAME),
    the input (C, H, W) and the head's outputs. Weights are not part of it: a model file holds them."""

    backbone: str = "lenet"
    in_shape: Tuple[int, int, int] = MNIST_SHAPE
    out_dim: int = 256

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "in_shape": list(self.in_shape)}

    @classmethod
    def from_model_file(cls, ckpt: Mapping[str, Any]) -> "ModelSpec":
        """The spec of a model file; files written before backbones existed hold a LeNet."""
        if "model" in ckpt:
            m = ckpt["model"]
            return cls(str(m["backbone"]), tuple(m["in_shape"]), int(m["out_dim"]))  # type: ignore[arg-type]
        out_dim = int(ckpt.get("out_dim", ckpt["config"]["embedding_dim"]))
        return cls("lenet", tuple(ckpt.get("in_shape", MNIST_SHAPE)), out_dim)  # type: ignore[arg-type]


class EmbeddingNet(nn.Module):
    """Backbone, then ReLU and Linear (feature_dim -> `dim`): the metric embedding (not normalised).
    ``encoder`` is the backbone: its features are what the discriminator sees."""

    def __init__(self, dim: int = 256, in_shape: Tuple[int, int, int] = MNIST_SHAPE,
                 backbone: str = "lenet") -> None:
        super().__init__()
        self.backbone_spec = backbone
        self.encoder: Backbone = build_backbone(backbone, in_shape)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.encoder.feature_dim, dim))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.backbone_spec, tuple(self.encoder.in_shape), self.head[1].out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def embed_detached_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding with the backbone's trunk cut from the graph: gradients reach only its neck
        and the head (the official code's center-magnet step, on LeNet's fully connected layers)."""
        enc = self.encoder
        return self.head(enc.neck(enc.trunk(enc.scaling(x)).detach()))


def build_model(spec: ModelSpec) -> EmbeddingNet:
    """A freshly initialised network of `spec` (draw inside :func:`madda_rs.run.streams.seeded_init`
    for a seeded one)."""
    return EmbeddingNet(spec.out_dim, spec.in_shape, spec.backbone)


class Discriminator(nn.Module):
    """features -> 500 -> 500 -> 1 logit with ReLUs (one logit + BCE equals the official 2-logit CE)."""

    def __init__(self, in_dim: int = 500) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 500), nn.ReLU(), nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


__all__ = ["EmbeddingNet", "Discriminator", "ModelSpec", "build_model", "MNIST_SHAPE"]
