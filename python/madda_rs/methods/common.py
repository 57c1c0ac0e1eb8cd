"""Building blocks that methods share, each public: batches, augmentation, Adam as the presets
set it up, the source stage's loop (:class:`SourceStage`) and the adversarial stage 2
(:class:`AdversarialTargetStage`: a target model started from the source model, trained against a
discriminator). A method subclasses or calls these; it never reaches into another method.

Random streams are derived per epoch from the run's seed (:mod:`madda_rs.run.streams`), never
carried from epoch to epoch, so a stage's state is its tensors alone and a resumed run draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import get_backbone
from ..config import MethodSettings, TrainConfig, setting
from ..data.images import ImageSet
from ..data.run_data import RunData
from ..losses import confusion_loss, discriminator_loss
from ..models import Discriminator, EmbeddingNet, ModelSpec, build_model
from ..run.precision import Precision
from ..run.processes import Parallel
from ..run.streams import seeded_init, torch_generator


@dataclass(frozen=True)
class AdversarialSettings(MethodSettings):
    """The settings of the adversarial stage 2 (:class:`AdversarialTargetStage`), which every
    adversarial method reads: a method's settings subclass this to add its own."""

    adversarial_passes: int = setting(1, "adversarial passes over the batches per target epoch (Alg. 2: one)",
                                      type=int, minimum=0)
    lr_discriminator: float = setting(1e-4, "Adam learning rate of the discriminator", type=float)
    lr_target: Optional[float] = setting(None, "Adam learning rate of the target model in stage 2 (default: --lr, "
                                         "which then sets both stages)", type=float)

    presets = {"paper": {}, "official": dict(adversarial_passes=3)}  # the released code's three passes
    stage_two = ("adversarial_passes", "lr_discriminator", "lr_target")

    def __post_init__(self) -> None:
        if not self.lr_discriminator > 0:
            raise ValueError(f"lr_discriminator must be > 0, got {self.lr_discriminator}")
        if self.lr_target is not None and not self.lr_target > 0:
            raise ValueError(f"lr_target must be > 0, got {self.lr_target}")


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> List[torch.Tensor]:
    """A shuffled epoch of CPU index batches; the last partial batch is dropped unless it is the only one."""
    perm = torch.randperm(n, generator=gen)
    cut = max(n // batch_size, 1) * batch_size
    return list(perm[: min(cut, n)].split(batch_size))


# Augmentation ranges, 'digits': rotations of up to 10 degrees, shifts of up to 2 pixels at 28x28,
# and scalings by 0.9-1.1: the variation between handwritten digit sets, short of changing a digit.
AUG_DEGREES, AUG_SHIFT, AUG_SCALE = 10.0, 2.0 / 28, 0.1
# 'photo' (torchvision's RandomResizedCrop, RandomHorizontalFlip and ColorJitter, as the published
# adaptation code trains ImageNet backbones): crops of 35-100% of the area at aspect ratios 3/4-4/3,
# a flip half the time, brightness, contrast and saturation each scaled by up to +-0.4.
CROP_AREA, CROP_RATIO, JITTER = (0.35, 1.0), (3 / 4, 4 / 3), 0.4


def augment(images: torch.Tensor, gen: torch.Generator, kind: str = "digits") -> torch.Tensor:
    """A random warp per image (and for 'photo', a colour jitter), drawn from `gen` (CPU) and
    applied to the whole batch at once on its device (affine_grid + grid_sample). torchvision's
    transforms draw one set of parameters per call, so a batch would either share one or cost a
    Python loop per image. `images` are model input in [-1, 1]; so is the result."""
    if kind == "photo":
        return _photo(images, gen)
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


def _photo(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, device = len(images), images.device
    area, log_ratio, pos_x, pos_y, flip = torch.rand(5, n, generator=gen)
    jitter = torch.rand(3, n, generator=gen)
    area = CROP_AREA[0] + area * (CROP_AREA[1] - CROP_AREA[0])
    ratio = torch.exp(torch.log(torch.tensor(CROP_RATIO[0])) + log_ratio * torch.log(torch.tensor(CROP_RATIO[1]
                                                                                                     / CROP_RATIO[0])))
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    # the crop's centre anywhere that keeps it inside the image (grid units: -1 to 1 across)
    cx, cy = (pos_x * 2 - 1) * (1 - width), (pos_y * 2 - 1) * (1 - height)
    sign = torch.where(flip < 0.5, -1.0, 1.0)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([width * sign, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)
    grid = F.affine_grid(theta.to(device), list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # colour jitter in [0, 1]: brightness, contrast (about the image's mean), saturation (about its grey)
    brightness, contrast, saturation = (1 + (jitter * 2 - 1) * JITTER).to(device).view(3, n, 1, 1, 1)
    y = (x + 1) / 2 * brightness
    y = (y - y.mean(dim=(1, 2, 3), keepdim=True)) * contrast + y.mean(dim=(1, 2, 3), keepdim=True)
    if y.shape[1] == 3:
        grey = (y * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        y = (y - grey) * saturation + grey
    return y.clamp_(0, 1).mul_(2).sub_(1)


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


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, in place: the update
    torch.optim.swa_utils.get_ema_multi_avg_fn makes (a decay near 1 moves the teacher slowly)."""
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - decay)


# The guard's rule, on the target training images alone: adaptation merged classes when its
# predictions cover fewer classes than the source model's did, or their histogram's normalised
# entropy fell by more than this.
GUARD_ENTROPY_DROP = 0.1


def guard_verdict(source_only: Dict[str, Any], final: Dict[str, Any]) -> Optional[str]:
    """Why the adapted model should not replace the source model (TrainConfig.guard), or None."""
    if final["pred_classes"] < source_only["pred_classes"]:
        return (f"adaptation predicts {final['pred_classes']} classes on the target, the source model "
                f"{source_only['pred_classes']}")
    if final["pred_entropy"] < source_only["pred_entropy"] - GUARD_ENTROPY_DROP:
        return (f"the predicted classes' balance fell from {source_only['pred_entropy']:.3f} to "
                f"{final['pred_entropy']:.3f} (normalised entropy)")
    return None


BatchResult = Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


def class_indices(labels: torch.Tensor, device: torch.device) -> Tuple[int, torch.Tensor]:
    """The number of classes C and each label's index 0..C-1 among the sorted distinct labels
    (on `device`): a softmax head's targets, and the index of class_means' centres."""
    classes, index = np.unique(labels.cpu().numpy(), return_inverse=True)
    return len(classes), torch.from_numpy(index.astype(np.int64)).to(device)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy and the batch's accuracy (detached, for the epoch's figures)."""
    return F.cross_entropy(logits, targets), (logits.detach().argmax(1) == targets).float().mean()


class SourceStage:
    """Stage 1's loop over the labelled source, shared by every method: one model (`out_dim`
    outputs) and its optimiser, shuffled batches sharded over processes, augmentation when the
    config asks. A method supplies :meth:`batch_loss`."""

    name = "source"
    shown: Tuple[str, ...] = ("loss",)  # the figures a progress bar shows

    def __init__(self, config: TrainConfig, source: ImageSet, device: torch.device, parallel: Parallel,
                 out_dim: int, auxiliary: Optional[torch.nn.Module] = None) -> None:
        """`auxiliary`: a module trained beside the model in this stage alone (M-ADDA's softmax
        head over the embedding), sharing its optimiser, gradients and checkpoints; the stage's
        output is the model without it."""
        assert source.labels is not None
        self.config, self.source, self.device, self.parallel = config, source, device, parallel
        self.epochs = config.epochs_source
        with seeded_init(config.seed, "init_source"):
            model = build_model(ModelSpec(config.backbone, source.shape, out_dim))
        model.encoder.recompute_activations = config.recompute_activations
        if config.weights is not None:  # pretrained: the backbone's own weights replace its initial draw
            model.encoder.load_weights(config.weights, download=config.download)
        # channels-last weights: LeNet's training step ran 1.5-1.7x faster so on a 2-core CPU
        self.model = model.to(device, memory_format=torch.channels_last)
        self.augmentation = config.augmentation or model.encoder.augmentation
        parallel.broadcast(self.model)
        self.auxiliary = auxiliary
        if auxiliary is not None:
            auxiliary.to(device)
            parallel.broadcast(auxiliary)
        self.optimizer = adam(self.parameters(), config, config.lr)
        self.precision = Precision(config.precision, device, get_backbone(config.backbone).cpu_bf16_default)

    def parameters(self) -> List[torch.nn.Parameter]:
        """What the stage's optimiser trains: the model's parameters, then the auxiliary module's."""
        extra = list(self.auxiliary.parameters()) if self.auxiliary is not None else []
        return list(self.model.parameters()) + extra

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's float32 output on a batch, computed in the run's precision."""
        return self.precision.forward(self.model, images)

    def batch_loss(self, images: torch.Tensor, rows: torch.Tensor, epoch: int, step: int) -> BatchResult:
        """The loss of one batch (`rows`: its CPU indices into the source) and the per-step figures
        to average over the epoch; None skips the step on every rank."""
        raise NotImplementedError

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        config, parallel = self.config, self.parallel
        self.model.train()
        figures: Dict[str, List[torch.Tensor]] = defaultdict(list)
        gen = torch_generator(config.seed, "batches_source", epoch)
        warp = torch_generator(config.seed, "augment", 0, epoch, parallel.rank)
        shards = [parallel.shard(batch) for batch in epoch_batches(len(self.source), config.batch_size, gen)]
        stream = self.source.stream([rows for rows, _ in shards], self.device)
        for step, ((rows, share), images) in enumerate(zip(shards, stream)):
            if config.augment:
                images = augment(images, warp, self.augmentation)
            result = self.batch_loss(images, rows, epoch, step)
            if result is None:
                continue
            loss, step_figures = result
            zero_grad(self.optimizer, config)
            self.precision.backward(loss, self.optimizer)
            parallel.sync_grads(self.parameters(), share)
            self.precision.step(self.optimizer)
            for key, value in step_figures.items():
                figures[key].append(value)
        return parallel.mean({key: mean(values) for key, values in figures.items()})

    def state_dict(self) -> Dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.auxiliary is not None:
            state["auxiliary"] = self.auxiliary.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.auxiliary is not None:
            self.auxiliary.load_state_dict(state["auxiliary"])
        self.optimizer.load_state_dict(state["optimizer"])


class AdversarialTargetStage:
    """Stage 2's adversarial part (ADDA, and M-ADDA's Eq. 3): a target model initialised from the
    frozen source model, a discriminator on encoder features, their optimisers, and a mean-teacher
    copy of the target model when `ema_decay` > 0 (the stage's :attr:`output`). The config's
    method reads :class:`AdversarialSettings`."""

    name = "target"
    shown: Tuple[str, ...] = ("d_loss", "d_acc")

    def __init__(self, config: TrainConfig, source_model: EmbeddingNet, data: RunData, device: torch.device,
                 parallel: Parallel, ema_decay: float = 0.0) -> None:
        self.config, self.data, self.device, self.parallel = config, data, device, parallel
        self.ema_decay = ema_decay
        self.epochs = config.epochs_target
        self.source_model = source_model.eval().requires_grad_(False)  # frozen: M_S in Eq. 3
        self.augmentation = config.augmentation or source_model.encoder.augmentation
        self.target = copy.deepcopy(source_model).train().requires_grad_(True)
        self.target.encoder.recompute_activations = config.recompute_activations
        with seeded_init(config.seed, "init_discriminator"):
            self.disc = Discriminator(source_model.encoder.feature_dim).to(device)
        parallel.broadcast(self.disc)
        lr_target = config.lr if config.lr_target is None else config.lr_target
        self.opt_t = adam(self.target.parameters(), config, lr_target)
        self.opt_d = adam(self.disc.parameters(), config, config.lr_discriminator)
        self.precision = Precision(config.precision, device, get_backbone(config.backbone).cpu_bf16_default)
        # the mean teacher: an exponential moving average of the target model's weights
        self.teacher = copy.deepcopy(self.target).eval().requires_grad_(False) if ema_decay > 0 else None

    @property
    def output(self) -> EmbeddingNet:
        """The model this stage yields: the mean teacher when there is one, else the target model."""
        return self.teacher if self.teacher is not None else self.target

    def batches(self, epoch: int) -> torch.Generator:
        """The epoch's batch-order generator (both passes of M-ADDA draw from it in turn)."""
        return torch_generator(self.config.seed, "batches_target", epoch)

    def warp(self, images: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
        return augment(images, gen, self.augmentation) if gen is not None else images

    def backward_target(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss, self.opt_t)

    def step_target(self) -> None:
        """The target model's optimiser step, then the teacher's moving-average update."""
        self.precision.step(self.opt_t)
        if self.teacher is not None:
            ema_update(self.teacher, self.target, self.ema_decay)

    def adversarial_epoch(self, gen: torch.Generator, warp: Optional[torch.Generator]) -> Dict[str, float]:
        """`config.adversarial_passes` passes over paired source and target batches: a
        discriminator step, then a target-encoder step that confuses it (Eq. 3)."""
        config, src, tgt = self.config, self.data.src_train, self.data.tgt_train
        d_losses: List[torch.Tensor] = []
        g_losses: List[torch.Tensor] = []
        d_correct: List[torch.Tensor] = []
        for _ in range(config.adversarial_passes):
            src_batches = epoch_batches(len(src), config.batch_size, gen)
            tgt_batches = epoch_batches(len(tgt), config.target_batch_size, gen)
            pairs = min(len(src_batches), len(tgt_batches))
            src_rows = [self.parallel.shard(b)[0] for b in src_batches[:pairs]]
            tgt_shards = [self.parallel.shard(b) for b in tgt_batches[:pairs]]
            images = zip(src.stream(src_rows, self.device), tgt.stream([r for r, _ in tgt_shards], self.device))
            for i, (x_src, x_tgt) in enumerate(images):
                # this rank's share of the discriminator's batch: its source and target rows together
                d_share = (len(src_rows[i]) + len(tgt_shards[i][0])) / (len(src_batches[i]) + len(tgt_batches[i]))
                d_loss, g_loss, correct = self._adversarial_step(x_src, x_tgt, d_share, tgt_shards[i][1], warp)
                d_losses.append(d_loss)
                g_losses.append(g_loss)
                d_correct.append(correct)
        # d_acc near 1 means D wins outright (adaptation stalls); near 0.5, D is fooled
        return {"d_loss": mean(d_losses), "g_loss": mean(g_losses), "d_acc": mean(d_correct)}

    def _adversarial_step(self, x_src: torch.Tensor, x_tgt: torch.Tensor, d_share: float, t_share: float,
                          warp: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One discriminator step and one target-encoder step on this rank's source and target
        images; the shares weigh its gradients in the whole batch's (torchrun)."""
        config, parallel = self.config, self.parallel
        forward = self.precision.forward
        with torch.no_grad():
            f_src = forward(self.source_model.encoder, self.warp(x_src, warp))
        f_tgt = forward(self.target.encoder, self.warp(x_tgt, warp))
        s_logit, t_logit = forward(self.disc, f_src), forward(self.disc, f_tgt.detach())
        d_loss = discriminator_loss(s_logit, t_logit)
        zero_grad(self.opt_d, config)
        self.precision.backward(d_loss, self.opt_d)
        parallel.sync_grads(self.disc.parameters(), d_share)
        self.precision.step(self.opt_d)
        # D is frozen for the encoder's step: its gradients would only be cleared unused
        self.disc.requires_grad_(False)
        g_loss = confusion_loss(forward(self.disc, f_tgt))
        zero_grad(self.opt_t, config)
        self.backward_target(g_loss)
        parallel.sync_grads(self.target.parameters(), t_share)
        self.step_target()
        self.disc.requires_grad_(True)
        return d_loss.detach(), g_loss.detach(), torch.cat([s_logit > 0, t_logit < 0]).float().mean()

    def state_dict(self) -> Dict[str, Any]:
        state = {
            "target": self.target.state_dict(), "discriminator": self.disc.state_dict(),
            "opt_target": self.opt_t.state_dict(), "opt_discriminator": self.opt_d.state_dict(),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_t.load_state_dict(state["opt_target"])
        self.opt_d.load_state_dict(state["opt_discriminator"])


__all__ = ["AdversarialSettings", "guard_verdict", "GUARD_ENTROPY_DROP", "epoch_batches", "augment", "adam",
           "zero_grad", "mean", "ema_update", "SourceStage", "AdversarialTargetStage"]
