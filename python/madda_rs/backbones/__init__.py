"""Backbones: the network before the embedding head, one module each, found by a registry.

A backbone is a subclass of :class:`Backbone` decorated with ``@register_backbone("NAME")``. It
declares what every consumer needs and nothing else reads from its insides:

* ``feature_dim``: the width of its features (what the head and the discriminator take);
* ``channels`` and ``min_size``: the input it expects (grey input to a colour backbone is
  repeated to 3 channels by its input layer);
* ``weight_choices``: what ``--weights`` may name besides a file (``imagenet`` where it has
  pretrained weights), and :meth:`Backbone.load_weights` to load them;
* ``augmentation``: the augmentation that suits its images ('digits': small affine warps;
  'photo': random resized crops, flips and colour jitter);
* where its trunk ends: ``forward(x) = neck(trunk(scale(x)))``. ``trunk`` is what
  ``magnet_scope='fc'`` cuts from the graph; ``neck`` maps the trunk's output to the features;
* its trunk's stages, where it runs them through :meth:`Backbone.stages` (``splits_trunk``): then
  ``--recompute-activations`` keeps only the stages' outputs for the backward pass and recomputes
  the rest (activation checkpointing), for large images on little memory.

Every backbone takes images in madda_rs's one scale, float (N, C, H, W) in [-1, 1] (pixel / 255
* 2 - 1), and carries its own input normalisation as a layer (:class:`InputScaling`), so the data
path never knows which network runs and an exported model scales its own input.

A module dropped into this package is found by :func:`discover`; one elsewhere is named as
``--backbone path/to/file.py:NAME`` or ``--backbone package.module:NAME`` (docs/extending.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar

import torch
from torch import nn

from ..config import AUGMENTATIONS
from ..plugins import import_package_modules, lookup

# torchvision's ImageNet normalisation (the transforms of every IMAGENET1K weights entry)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class InputScaling(nn.Module):
    """[-1, 1] images -> what a backbone's weights expect: ``((x + 1) / 2 - mean) / std`` per
    channel, grey repeated to `channels` first. Part of the model, so it is exported with it."""

    def __init__(self, channels: int, mean: Tuple[float, ...], std: Tuple[float, ...]) -> None:
        super().__init__()
        self.channels = channels
        # (x + 1) / 2 - mean) / std == x * a + b, with a = 1 / (2 std), b = (0.5 - mean) / std
        std_t, mean_t = torch.tensor(std).view(1, -1, 1, 1), torch.tensor(mean).view(1, -1, 1, 1)
        self.register_buffer("scale", 0.5 / std_t, persistent=False)
        self.register_buffer("shift", (0.5 - mean_t) / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # grey repeated to colour (a no-op on images that already have the channels; no branch, so
        # the traced and ONNX models take both)
        return x.expand(-1, self.channels, -1, -1) * self.scale + self.shift


class Backbone(nn.Module):
    """One network before the embedding head. Subclasses set the class attributes, build their
    layers in ``__init__(in_shape)`` and implement :meth:`trunk` and :meth:`neck`."""

    name: str = ""  # set by register_backbone
    summary: str = ""  # one line for --help and docs
    feature_dim: int = 0
    # what the first layer takes (1-channel input is repeated by its InputScaling); None: the
    # images' own count, whatever it is (the layer is built from in_shape)
    channels: Optional[int] = 3
    min_size: int = 1  # smallest height and width the network handles
    augmentation: str = "digits"
    weight_choices: Tuple[str, ...] = ()  # names --weights takes besides a file (e.g. 'imagenet')
    # whether parameter shapes are the same at every image size (so a weights file can be checked
    # before the images are read), and a shape to build at for that check
    size_free_weights: bool = True
    default_shape: Tuple[int, int, int] = (3, 224, 224)
    splits_trunk: bool = False  # its trunk runs through stages(): --recompute-activations applies
    # whether bf16 autocast is its default on a CPU with native bf16 (where it measured faster at
    # equal accuracy; docs/speed.md, 'Precision'); False keeps such a CPU on fp32 unless asked
    cpu_bf16_default: bool = True

    def __init__(self, in_shape: Tuple[int, int, int]) -> None:
        super().__init__()
        self.in_shape = tuple(int(v) for v in in_shape)
        # a training-time switch (TrainConfig.recompute_activations), not part of the model
        self.recompute_activations = False

    def stages(self, stages: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """`x` through `stages` in turn. With :attr:`recompute_activations`, while training with
        gradients, each stage keeps only its input for the backward pass and runs again there
        (torch.utils.checkpoint; the recomputation leaves batch-norm running statistics alone,
        so they move once per step as without it). The values and gradients are the same."""
        if not (self.recompute_activations and self.training and torch.is_grad_enabled()):
            for stage in stages:
                x = stage(x)
            return x
        from torch.utils.checkpoint import checkpoint

        for stage in stages:
            x = checkpoint(stage, x, use_reentrant=False,
                           context_fn=lambda stage=stage: (_nothing(), _frozen_batch_stats(stage)))
        return x

    def scaling(self, x: torch.Tensor) -> torch.Tensor:
        """The input normalisation (identity unless the backbone has an :class:`InputScaling`)."""
        scale = getattr(self, "input_scaling", None)
        return x if scale is None else scale(x)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled images -> the trunk's output (what magnet_scope='fc' detaches)."""
        raise NotImplementedError

    def neck(self, t: torch.Tensor) -> torch.Tensor:
        """The trunk's output -> (N, feature_dim) features."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.trunk(self.scaling(x)))

    def load_weights(self, weights: str, *, download: bool = True) -> None:
        """Load `weights`: one of :attr:`weight_choices`, or a state-dict file. Raises ValueError
        naming the file and the first key that does not fit."""
        if weights in self.weight_choices:
            raise NotImplementedError(f"backbone {self.name} lists {weights!r} but does not load it")
        self.load_state_file(weights)

    def load_state_file(self, path: str, module: Optional[nn.Module] = None, *,
                        ignore: Tuple[str, ...] = ()) -> None:
        """Load a state dict saved with ``torch.save(model.state_dict(), path)`` into `module`
        (default: this backbone); keys starting with one of `ignore` are skipped."""
        state = read_state_file(path)
        load_checked(module if module is not None else self, state, path, ignore=ignore)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _frozen_batch_stats(module: nn.Module) -> Iterator[None]:
    """Batch norms in `module` normalise by the batch as before but leave their running statistics
    unchanged (momentum 0): a recomputed forward pass must not count the batch twice."""
    norms: List[nn.modules.batchnorm._BatchNorm] = [m for m in module.modules()
                                                     if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def read_state_file(path: str) -> Dict[str, torch.Tensor]:
    """The state dict in `path` (a dict of tensors; a checkpoint's 'state_dict' entry also works)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--weights {path}: no such file (expected a state dict saved with torch.save, or one of "
                         f"the backbone's named weights)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle of something else: name the file
        raise ValueError(f"--weights {path}: cannot be read as a saved state dict ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {path}: expected a dict of tensors (a state_dict), got {type(state).__name__}")
    return state


def load_checked(module: nn.Module, state: Dict[str, torch.Tensor], where: str, *,
                 ignore: Tuple[str, ...] = ()) -> None:
    """``module.load_state_dict(state)``, refusing with one line naming `where` and the first key
    that is missing, unexpected or of another shape (torch's own message lists them all)."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    own = module.state_dict()
    for key, value in own.items():
        if key not in state:
            raise ValueError(f"--weights {where}: key {key!r} is missing (a state dict of another architecture, "
                             f"or truncated?)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"--weights {where}: key {key!r} has shape {tuple(state[key].shape)}, the backbone "
                             f"needs {tuple(value.shape)} (a state dict of another architecture?)")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ValueError(f"--weights {where}: key {extra[0]!r} is not in the backbone ({len(extra)} such keys; a "
                         f"state dict of another architecture?)")
    module.load_state_dict(state)


_REGISTRY: Dict[str, Type[Backbone]] = {}
B = TypeVar("B", bound=Type[Backbone])


def register_backbone(name: str) -> Callable[[B], B]:
    """Class decorator: register a :class:`Backbone` subclass under `name` (for ``--backbone``)."""
    if not name or ":" in name:
        raise ValueError(f"a backbone name must be non-empty and without ':', got {name!r}")

    def add(cls: B) -> B:
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"backbone {name!r} is already registered by {known.__module__}")
        if cls.feature_dim < 1 or cls.augmentation not in AUGMENTATIONS:
            raise ValueError(f"backbone {name!r}: feature_dim must be >= 1 and augmentation one of "
                             f"{', '.join(AUGMENTATIONS)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def discover() -> None:
    """Import every module of this package, so each registers its backbones."""
    import_package_modules(__path__, __name__)


def backbone_names() -> Tuple[str, ...]:
    discover()
    return tuple(sorted(_REGISTRY))


def get_backbone(spec: str) -> Type[Backbone]:
    """The backbone class registered as `spec`, or for ``FILE.py:NAME`` / ``MODULE:NAME`` the
    backbone NAME that importing FILE or MODULE registers."""
    discover()
    return lookup(_REGISTRY, spec, "backbone")


def check_input(backbone: Type[Backbone], shape: Tuple[int, int, int], what: str = "images") -> None:
    """Refuse images the backbone cannot take: smaller than its minimum, or of a channel count
    other than 1 or its own."""
    c, h, w = shape
    if min(h, w) < backbone.min_size:
        raise ValueError(f"{what} of {h}x{w} are too small for backbone {backbone.name}: it needs at least "
                         f"{backbone.min_size}x{backbone.min_size} (--image-size, or resize the images)")
    if backbone.channels is not None and c not in (1, backbone.channels):
        raise ValueError(f"{what} have {c} channels; backbone {backbone.name} takes {backbone.channels} (or 1)")


def check_backbone(name: str, weights: Optional[str], download: bool = True) -> Type[Backbone]:
    """The backbone `name`, after checking that `weights` (if any) can load into it: one of its
    named weights, or a readable state dict whose keys and shapes fit (for backbones whose
    parameter shapes do not depend on the image size; LeNet's are checked when the run builds it)."""
    cls = get_backbone(name)
    if weights is None or weights in cls.weight_choices:
        return cls
    if cls.size_free_weights:  # load it for real: a missing, truncated or foreign file is named here
        cls(cls.default_shape).load_weights(weights, download=download)
    else:  # at least readable; the keys are checked when the run builds it at the images' size
        read_state_file(weights)
    return cls


def build_backbone(spec: str, in_shape: Tuple[int, int, int]) -> Backbone:
    cls = get_backbone(spec)
    check_input(cls, in_shape)
    return cls(in_shape)


__all__ = ["Backbone", "InputScaling", "register_backbone", "get_backbone", "backbone_names", "discover",
           "check_input", "check_backbone", "build_backbone", "read_state_file", "load_checked", "IMAGENET_MEAN",
           "IMAGENET_STD"]
