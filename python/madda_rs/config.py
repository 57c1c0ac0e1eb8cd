"""Training settings: one frozen dataclass, two named presets, saved as JSON with every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

DOMAINS = ("mnist", "usps")
PROTOCOLS = ("adda", "full")
USPS_RESIZES = ("box20", "stretch")
DEVICES = ("auto", "cpu", "cuda")
NEGATIVES = ("random", "violating", "hardest", "semihard")
CENTERS = ("class_means", "kmeans")
MAGNET_SCOPES = ("model", "fc")

# Where the two presets differ. 'paper' follows the text of Laradji & Babanezhad (2018);
# 'official' follows the authors' released code (see README, "Presets").
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(
        negatives="random",  # Alg. 1: "a random sample whose label is not y_i"
        centers="class_means",  # Alg. 2 line 8: Euclidean mean of each class
        magnet_scope="model",  # Eq. 4 is minimised w.r.t. all of theta_T
        adversarial_passes=1,  # Alg. 2: one loop over the batches per epoch
        zero_grad_momentum=False,
    ),
    "official": dict(
        negatives="violating",  # uniform among margin violators
        centers="kmeans",  # KMeans(10) of source embeddings, refit every epoch
        magnet_scope="fc",  # conv output detached: the magnet trains the fully connected layers only
        adversarial_passes=3,
        zero_grad_momentum=True,  # PyTorch 0.4 zeroed grads, so Adam kept moving params via momentum
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one M-ADDA run. Defaults are the 'paper' preset with the official
    code's values where the paper is silent (k, optimiser, batch sizes)."""

    src: str = "mnist"
    tgt: str = "usps"
    protocol: str = "adda"  # 'adda': 2,000 MNIST / 1,800 USPS training images; 'full': all
    preset: str = "paper"
    usps_resize: str = "box20"
    epochs_source: int = 200
    epochs_target: int = 200
    batch_size: int = 64  # source batch (triplets and adversarial source side)
    target_batch_size: int = 50
    k: int = 2
    seed: int = 0
    device: str = "auto"
    data_dir: Optional[str] = None
    download: bool = True
    lr: float = 1e-4
    lr_discriminator: Optional[float] = None  # None: same as lr (both presets)
    betas: Tuple[float, float] = (0.5, 0.9)
    margin: float = 1.0
    embedding_dim: int = 256
    negatives: str = "random"
    centers: str = "class_means"
    magnet_scope: str = "model"
    adversarial_passes: int = 1
    zero_grad_momentum: bool = False
    magnet: bool = True  # --no-magnet: Table 3 "adversarial only"
    adversarial: bool = True  # --no-adversarial: Table 3 "center magnet only"
    source_only: bool = False  # baseline: kNN on the source model, no adaptation
    eval_every: int = 10  # target-test accuracy in the history every N target epochs (and the last)
    threads: Optional[int] = None  # torch and native threads; None: all cores

    def __post_init__(self) -> None:
        _choice("src", self.src, DOMAINS)
        _choice("tgt", self.tgt, DOMAINS)
        if self.src == self.tgt:
            raise ValueError(f"src and tgt must differ, got both {self.src!r}")
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("preset", self.preset, tuple(PRESETS))
        _choice("usps_resize", self.usps_resize, USPS_RESIZES)
        _choice("device", self.device, DEVICES)
        _choice("negatives", self.negatives, NEGATIVES)
        _choice("centers", self.centers, CENTERS)
        _choice("magnet_scope", self.magnet_scope, MAGNET_SCOPES)
        for name in ("epochs_source", "epochs_target", "adversarial_passes"):
            _int_at_least(name, getattr(self, name), 0)
        for name in ("batch_size", "target_batch_size", "k", "embedding_dim", "eval_every"):
            _int_at_least(name, getattr(self, name), 1)
        if self.threads is not None:
            _int_at_least("threads", self.threads, 1)
        _int_at_least("seed", self.seed, 0)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_discriminator is not None and not self.lr_discriminator > 0:
            raise ValueError(f"lr_discriminator must be > 0, got {self.lr_discriminator}")
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.source_only and not (self.magnet or self.adversarial):
            raise ValueError("--no-magnet and --no-adversarial together leave nothing to train; use --source-only")

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides: Any) -> "TrainConfig":
        """The preset's values, then `overrides` (those that are None are ignored)."""
        _choice("preset", preset, tuple(PRESETS))
        values = dict(PRESETS[preset], preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if k == "betas" else v) for k, v in values.items() if k in known}
        return cls(**values)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)


def _choice(name: str, value: Any, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _int_at_least(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


__all__ = ["TrainConfig", "PRESETS"]
