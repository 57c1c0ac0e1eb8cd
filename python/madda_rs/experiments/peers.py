"""Peers through their own code: skada's deep methods on exactly the images a madda_rs run sees
(`madda-rs reproduce peers`).

Each run builds its data with :func:`madda_rs.data.run_data.prepare_data` from the
:class:`~madda_rs.config.TrainConfig` that a madda_rs ADDA run of the same task, USPS split and
seed uses (ADDA protocol: the same 2,000 MNIST / 1,800 USPS training images, the same test set),
then trains one of skada's deep estimators (``skada.deep.DANN`` and the others, built by skada's
own factory functions and fitted by skorch) with:

* the backbone ADDA trains: :class:`madda_rs.models.EmbeddingNet` with one output per class (the
  LeNet encoder, ReLU, Linear 500 -> classes), started from the weights a madda_rs run of that
  seed starts from (stream 'init_source'). skada's feature layer (``layer_name``) is
  ``"encoder"``: its 500-d output is what ADDA's discriminator sees;
* skada's defaults for every method argument (``reg`` and the rest), so no labelled target image
  chose a setting; only sizes skada cannot infer (``num_features``, ``n_classes``) are given;
* one optimiser and budget for all: Adam with the presets' betas (0.5, 0.9), batches of 64 source
  + 64 target images (skada's balanced loader), and as many epochs as the ``improved`` preset's
  passes (80 + 30 = 110) unless told otherwise; no validation split, no early stopping: the final
  epoch is what is scored;
* each method's learning rate as the development tasks chose it (:data:`CHOSEN_LR`, by
  `madda-rs reproduce peers-dev`: the same tasks, none targeting MNIST or USPS, that chose the
  ``labelfree`` preset), else the presets' 1e-4, which no one chose for them.

Every run writes ``OUT/runs/peers/<name>/config.json`` (what was run, with the data config) and
``metrics.json`` (target test accuracy, wall time, label-free figures on the target *training*
images). A run whose metrics.json exists is complete and skipped, so an interrupted table picks up
where it stopped. skada and skorch are the optional ``peers`` extra; nothing here imports them
until a run starts.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..config import PRESETS, TrainConfig
from ..data.run_data import RunData, prepare_data
from ..models import EmbeddingNet
from ..run.folder import CONFIG_FILE, METRICS_FILE, load_run, resume_conflicts
from ..run.processes import configure_threads, machine_record, resolve_device
from ..run.streams import numpy_rng, seeded_init, stream_seed
from ..scores.label_free import (
    batch_nuclear_norm,
    class_ami,
    information_maximisation,
    label_free_figures,
    mean_entropy,
    soft_neighbourhood_density,
)
from .reproduce import (
    DEV_COLUMNS,
    GUARD_NOTE,
    LABELFREE_LABEL,
    PRETRAINED_CHOICE_2_LABEL,
    PRETRAINED_CHOICE_LABEL,
    PRETRAINED_DEV_COLUMNS,
    SCHEDULES,
    TABLES,
    TUNED_LABEL,
    Column,
    cell_text,
    guard_mark,
    guarded_runs,
    plan,
    row_target_labels,
)

log = logging.getLogger("madda_rs")

MISSING_EXTRA = "madda-rs reproduce peers needs the 'peers' extra: pip install 'madda-rs[peers]'"
FEATURE_LAYER = "encoder"  # EmbeddingNet's backbone: the features ADDA's discriminator sees (500-d for LeNet)
# One optimiser and budget for every peer: the presets' Adam, the paper's batch size, and the
# improved preset's passes over the data (its source + target epochs).
LR, BETAS, BATCH_SIZE = PRESETS["paper"]["lr"], PRESETS["paper"]["betas"], PRESETS["paper"]["batch_size"]
DEFAULT_EPOCHS = PRESETS["improved"]["epochs_source"] + PRESETS["improved"]["epochs_target"]
# The tables a peers table stands beside, and its peers' default epochs: as many passes as the
# M-ADDA rows there (the colour table's rows run at tune's 40 + 15).
PEER_TABLES = {"table1": DEFAULT_EPOCHS, "colour": sum(SCHEDULES["adda"]["dev"][:2])}
SOURCE_DOMAIN, TARGET_DOMAIN = 1, -2  # skada's sample_domain convention: sources >= 0, targets < 0
PEERS_DIR = Path("runs") / "peers"  # under OUT
# Choosing each peer's learning rate on the development tasks (docs/label-free.md): the grid, and
# the epochs of the choice (fewer than the table's 110: the grid x methods x six tasks must fit a CPU).
DEV_LRS = (1e-4, 1e-3)
# ... and then each method's adaptation weight (Peer.reg_arg), a decade either side of skada's
# default 1, at the method's chosen rate: a second step of the same choice, against the rate step's
# run at the default (`--regs 0.1,1,10` runs the default again beside them, on one machine)
DEV_REGS = (0.1, 10.0)
DEV_EPOCHS = 30
# What `madda-rs reproduce peers-dev --out results` chose (results/peers-dev.json holds the evidence;
# a test keeps the two in step): the learning rate with the best mean target accuracy over the
# development tasks. A method not here trains at LR, which no one chose: CAN has not been
# through the choice yet (CPU time; its loss is broken in skada 0.6.0, CAN_NOTE).
CHOSEN_LR: Dict[str, float] = {"sourceonly": 1e-3, "mcc": 1e-3, "cdan-sigmoid": 1e-3, "dan": 1e-3, "spa-sigmoid": 1e-4,
                              "dann-sigmoid": 1e-3, "deepcoral": 1e-3, "deepjdot": 1e-3, "mdd": 1e-3}
# What `madda-rs reproduce peers-dev-pretrained --out results` chose on the pretrained development
# task (fashion-mnist -> fashion-m, EfficientNet-Lite0 from ImageNet weights, the task that chose
# M-ADDA's pretrained recipe; results/peers-dev-pretrained.json), for the columns that start from
# pretrained weights. A method not here carries its CHOSEN_LR (chosen with LeNet) to them.
CHOSEN_LR_PRETRAINED: Dict[str, float] = {"dann-sigmoid": 1e-3}
# The adaptation weight `reproduce peers-dev` chose at the chosen rate (results/peers-dev.json), where
# it beat skada's default of 1; a method not here keeps the default. Chosen with LeNet, it trains the
# LeNet columns only: the colour table's backbones keep skada's default (their runs predate it).
CHOSEN_REG: Dict[str, float] = {"cdan-sigmoid": 0.1, "mdd": 0.1}
PRETRAINED_CHOICE_LABELS = "fashion-m test (the pretrained dev task), 10,000 (the learning rate)"
# tests/test_peers.py pins the defect this names
CAN_NOTE = (" skada 0.6.0's CAN loss (contrastive domain discrepancy) is large and positive between identical "
            "domains, where it should be at most 0 (class masks along one axis of its within-domain kernels), so "
            "CAN at its defaults scatters the classes it should align.")


class MissingExtraError(ImportError, RuntimeError):
    """skada or skorch is not installed (an ImportError; a RuntimeError too, so the CLI reports it
    in one line)."""


@dataclass(frozen=True)
class Peer:
    """One skada method: its row label, the factory in ``skada.deep`` and the sizes it must be told
    (``features``: pass num_features; ``classes``: pass n_classes). ``sigmoid_domain_classifier``
    passes a domain classifier ending in a sigmoid (see :class:`SigmoidDomainClassifier`).
    ``reg_arg`` names the factory's weight of the adaptation loss against the classification loss
    (skada documents it as each method's regularisation; default 1), None where there is none."""

    label: str
    factory: str
    features: bool = False
    classes: bool = False
    sigmoid_domain_classifier: bool = False
    reg_arg: Optional[str] = "reg"

    @property
    def slug(self) -> str:
        return self.factory.lower() + ("-sigmoid" if self.sigmoid_domain_classifier else "")


PEERS: Tuple[Peer, ...] = (
    Peer("Source only (skada SourceOnly)", "SourceOnly", reg_arg=None),
    Peer("DANN", "DANN", features=True),
    Peer("CDAN", "CDAN", features=True, classes=True),
    Peer("MDD", "MDD", features=True, classes=True),
    Peer("MCC", "MCC"),
    Peer("DeepCORAL", "DeepCoral"),
    Peer("DAN", "DAN"),
    Peer("DeepJDOT", "DeepJDOT", reg_arg="reg_dist"),  # the optimal-transport term's weight
    Peer("SPA", "SPA", features=True, reg_arg="reg_adv"),  # the adversarial term's weight
    Peer("CAN", "CAN"),
    # skada 0.6.0's default domain classifier ends in a softmax over its single output, so it
    # outputs 1 whatever the input and its loss has no gradient: DANN and CDAN at defaults train as
    # source only, SPA without its adversarial term. These rows pass the same classifier ending in
    # a sigmoid instead.
    Peer("DANN, sigmoid domain classifier", "DANN", features=True, sigmoid_domain_classifier=True),
    Peer("CDAN, sigmoid domain classifier", "CDAN", features=True, classes=True, sigmoid_domain_classifier=True),
    Peer("SPA, sigmoid domain classifier", "SPA", features=True, sigmoid_domain_classifier=True, reg_arg="reg_adv"),
)
PEER_NAMES = {p.slug: p for p in PEERS}

# madda_rs's own rows, from the committed runs of the table the peers stand beside (those of these
# labels that table has)
MADDA_ROWS = ("ADDA", "M-ADDA, preset paper", "M-ADDA, preset improved (ours)", LABELFREE_LABEL, TUNED_LABEL,
              PRETRAINED_CHOICE_LABEL, PRETRAINED_CHOICE_2_LABEL)


def require_skada() -> Tuple[Any, Any]:
    """(skada.deep, skorch), or :class:`MissingExtraError` saying how to install them."""
    try:
        import skada.deep
        import skorch
    except ImportError as exc:
        raise MissingExtraError(f"{MISSING_EXTRA} ({exc})") from exc
    return skada.deep, skorch


class SkadaNet(EmbeddingNet):
    """ADDA's network (the run's backbone, ReLU, Linear -> classes; LeNet by default) with the
    forward skada calls: it passes ``sample_weight`` when predicting, which the network does not use."""

    def forward(self, x: torch.Tensor, sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(x)


def sigmoid_domain_classifier(num_features: int) -> nn.Module:
    """skada's DomainClassifier (gradient reversal, Linear -> 100, BatchNorm, ReLU, Linear -> 1)
    with a sigmoid where skada 0.6.0 puts a softmax over the single output (a constant 1)."""
    from skada.deep.modules import DomainClassifier

    classifier = DomainClassifier(num_features=num_features)
    classifier.classifier[-1] = nn.Sigmoid()
    return classifier


@dataclass
class PeerRun:
    name: str  # folder under OUT/runs/peers
    peer: Peer
    config: TrainConfig  # the madda_rs run whose data this run uses (and its seed)
    epochs: int
    column: Column
    lr: float = LR
    reg: Optional[float] = None  # the peer's adaptation weight (Peer.reg_arg); None: skada's default

    def record(self) -> Dict[str, Any]:
        """config.json: what the run computes (run-only settings inside ``data`` aside); the
        adaptation weight appears only where it is set, so runs at skada's default keep their records."""
        weight = {} if self.reg is None else {"method_args": {self.peer.reg_arg: self.reg}}
        return {**weight,
            "method": self.peer.label, "library": "skada", "factory": f"skada.deep.{self.peer.factory}",
            "sigmoid_domain_classifier": self.peer.sigmoid_domain_classifier,
            "src": self.config.src, "tgt": self.config.tgt, "usps_split": self.config.usps_split,
            "protocol": self.config.protocol, "seed": self.config.seed,
            "backbone": "madda_rs.models.EmbeddingNet(n_classes): ADDA's LeNet", "feature_layer": FEATURE_LAYER,
            "optimizer": "Adam", "lr": self.lr, "betas": list(BETAS), "batch_size": BATCH_SIZE,
            "max_epochs": self.epochs,
            "data": self.config.to_dict(),
        }


def run_name(peer: Peer, config: TrainConfig, epochs: int, lr: float = LR, reg: Optional[float] = None) -> str:
    backbone = f"-{config.backbone}" if config.backbone != "lenet" else ""
    rate = f"-lr{lr:g}" if lr != LR else ""  # runs at the presets' lr keep their names
    weight = f"-reg{reg:g}" if reg is not None else ""  # and those at skada's default weight
    return (f"{config.src}2{config.tgt}-{config.usps_split}-{config.protocol}{backbone}-skada-{peer.slug}-e{epochs}"
            f"-s{config.seed}{rate}{weight}")


def _column_run(col: Column, epochs: int) -> Tuple[Dict[str, Any], int]:
    """A column's data settings and the epochs a peer trains on it: a column that scales the source
    epochs (a synth-digits source, ten times the images) scales the peer's the same way; other
    epoch settings are madda_rs's schedule, not a peer's."""
    settings = col.apply({"epochs_source": epochs})
    epochs = settings.pop("epochs_source")
    settings.pop("epochs_target", None)
    return settings, epochs


def pretrained(column: Column) -> bool:
    """Whether a column's backbone starts from pretrained weights."""
    return dict(column.settings).get("weights") is not None


def chosen_lr(slug: str, column: Column) -> Optional[float]:
    """The learning rate chosen for a method on a column: on the pretrained development task for
    a pretrained backbone where that choice was made, else on the development tasks (LeNet)."""
    if pretrained(column) and slug in CHOSEN_LR_PRETRAINED:
        return CHOSEN_LR_PRETRAINED[slug]
    return CHOSEN_LR.get(slug)


def chosen_reg(slug: str, column: Column) -> Optional[float]:
    """The adaptation weight chosen for a method on a column: the development tasks' choice on a
    LeNet column (the backbone they chose it with), else None (skada's default)."""
    return CHOSEN_REG.get(slug) if dict(column.settings).get("backbone", "lenet") == "lenet" else None


def chosen_by(slug: str, column: Column, lr: float, reg: Optional[float] = None) -> str:
    """Which labelled target images chose a method's rate `lr` and weight `reg` on a column
    ('none': no one chose them)."""
    if lr != chosen_lr(slug, column) or reg != chosen_reg(slug, column):
        return "none"
    if pretrained(column) and slug in CHOSEN_LR_PRETRAINED:
        return PRETRAINED_CHOICE_LABELS
    return f"dev targets only (the learning rate{' and weight' if reg is not None else ''})"


def plan_peers(seeds: Sequence[int], epochs: int = DEFAULT_EPOCHS, methods: Optional[Sequence[str]] = None,
               columns: Optional[Sequence[Column]] = None, lrs: Optional[Sequence[float]] = None,
               regs: Optional[Sequence[Optional[float]]] = None, **run_settings: Any) -> List[PeerRun]:
    """Every peer run of a table: method x column (task, USPS split) x seed, at each method's
    chosen rate and weight for the column (:func:`chosen_lr`, else LR; :func:`chosen_reg`) or,
    given `lrs` and `regs`, at each of them (a method without a weight runs at None alone).
    `methods` are :data:`PEER_NAMES` keys (default: all); `run_settings` (device, data_dir,
    threads) go into every data config."""
    if not seeds:
        raise ValueError("give at least one seed")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if lrs is not None and (not lrs or not all(np.isfinite(lr) and lr > 0 for lr in lrs)):
        raise ValueError(f"learning rates must be positive numbers, got {', '.join(map(str, lrs)) or 'none'}")
    if regs is not None and not all(w is None or (np.isfinite(w) and w > 0) for w in regs):
        raise ValueError(f"adaptation weights must be positive numbers, got {', '.join(map(str, regs))}")
    unknown = [m for m in methods or () if m not in PEER_NAMES]
    if unknown:
        raise ValueError(f"unknown peer methods {', '.join(unknown)}; expected some of {', '.join(PEER_NAMES)}")
    peers = [PEER_NAMES[m] for m in methods] if methods else list(PEERS)
    runs = []
    for peer in peers:
        for col in columns or TABLES["table1"].columns:
            weights = regs if regs is not None else (chosen_reg(peer.slug, col),)
            weights = weights if peer.reg_arg is not None else (None,)
            for lr, reg in itertools.product(lrs if lrs is not None else (chosen_lr(peer.slug, col) or LR,),
                                             dict.fromkeys(weights)):
                settings, col_epochs = _column_run(col, epochs)
                for seed in seeds:
                    config = TrainConfig(src=col.src, tgt=col.tgt, usps_split=col.usps_split,
                                         protocol=col.protocol, method="adda", seed=seed,
                                         **{**settings, **run_settings})
                    runs.append(PeerRun(run_name(peer, config, col_epochs, lr, reg), peer, config, col_epochs, col,
                                        lr, reg))
    return runs


def plan_peers_dev(seeds: Sequence[int], epochs: int = DEV_EPOCHS, methods: Optional[Sequence[str]] = None,
                   lrs: Sequence[float] = DEV_LRS, regs: Sequence[float] = DEV_REGS,
                   **run_settings: Any) -> List[PeerRun]:
    """The choice's runs: each method at each of `lrs` (skada's default weight), then each method
    with a chosen rate at that rate and each of `regs`, on the development tasks, with their data as
    the devtasks table has it (target images resized to the source's shape)."""
    runs = plan_peers(seeds, epochs, methods, DEV_COLUMNS, lrs, (None,), resize_to_source=True, **run_settings)
    weighted = [m for m in dict.fromkeys(r.peer.slug for r in runs) if m in CHOSEN_LR and PEER_NAMES[m].reg_arg]
    for slug in weighted if regs else ():
        runs += plan_peers(seeds, epochs, [slug], DEV_COLUMNS, (CHOSEN_LR[slug],), regs, resize_to_source=True,
                           **run_settings)
    return runs


def plan_peers_dev_pretrained(seeds: Sequence[int], epochs: int = PEER_TABLES["colour"],
                              methods: Optional[Sequence[str]] = None, lrs: Sequence[float] = DEV_LRS,
                              **run_settings: Any) -> List[PeerRun]:
    """The learning-rate choice for pretrained backbones: each method at each of `lrs` on the
    pretrained development task, at the colour table's epochs (the runs its rows use)."""
    return plan_peers(seeds, epochs, methods, PRETRAINED_DEV_COLUMNS, lrs, **run_settings)


def peer_state(folder: Path, run: PeerRun) -> str:
    """'complete' or 'new'. A folder holding a different run is a ValueError; where and how it ran
    (the data config's run-only settings) does not make another run."""
    if (folder / CONFIG_FILE).is_file():
        saved = json.loads((folder / CONFIG_FILE).read_text())
        want = json.loads(json.dumps(run.record()))
        differ = sorted(k for k in set(saved) | set(want) if k != "data" and saved.get(k) != want.get(k))
        try:  # the data config as reproduce compares it: settings added since take their default
            differ += [f"data.{k}" for k in resume_conflicts(saved.get("data", {}), want["data"])]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{folder} holds a config.json that is not a peer run's ({exc})") from None
        if differ:
            raise ValueError(f"{folder} holds a different run (settings {', '.join(differ)} differ); move it away "
                             f"or choose another --out")
    return "complete" if (folder / METRICS_FILE).is_file() else "new"


@contextmanager
def _seeded_globals(seed: int) -> Iterator[None]:
    """skada and skorch draw from the global generators (batch order, the domain classifier's
    weights, CDAN's random layer): seed torch's, NumPy's and Python's from the run's seed, and put
    them back afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "batches_source"))
        np.random.seed(stream_seed(seed, "batches_source") % 2**32)
        random.seed(stream_seed(seed, "batches_source"))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def build_net(peer: Peer, data: RunData, epochs: int, seed: int, device: torch.device, *, backbone: str = "lenet",
              weights: Optional[str] = None, lr: float = LR, reg: Optional[float] = None) -> Any:
    """The skada estimator of `peer`, built by skada's own factory with its defaults (its adaptation
    weight `reg` where given), around ADDA's network (on `backbone`) started from the run's
    'init_source' weights, or `weights` for the backbone."""
    deep, _ = require_skada()
    n_classes = len(data.class_names)
    with seeded_init(seed, "init_source"):
        module = SkadaNet(n_classes, data.src_train.shape, backbone)
    if weights is not None:
        module.encoder.load_weights(weights)
    num_features = module.encoder.feature_dim
    kwargs: Dict[str, Any] = {}
    if peer.features:
        kwargs["num_features"] = num_features
    if peer.classes:
        kwargs["n_classes"] = n_classes
    if reg is not None:
        if peer.reg_arg is None:
            raise ValueError(f"{peer.label} has no adaptation weight to set (reg {reg:g})")
        kwargs[peer.reg_arg] = reg
    if peer.factory == "SPA":
        kwargs["max_epochs"] = epochs  # SPA's own argument: it schedules its losses over the epochs
    with seeded_init(seed, "init_discriminator"):
        if peer.sigmoid_domain_classifier:
            # CDAN's classifier reads the (randomised, at most 4,096-d) multilinear map, as skada builds it
            width = min(num_features * n_classes, 4096) if peer.factory == "CDAN" else num_features
            kwargs["domain_classifier"] = sigmoid_domain_classifier(width)
        factory = getattr(deep, peer.factory)
        common = dict(optimizer=torch.optim.Adam, lr=lr, optimizer__betas=tuple(BETAS), batch_size=BATCH_SIZE,
                      train_split=None, device=str(device), verbose=0)
        if peer.factory != "SPA":
            common["max_epochs"] = epochs
        return factory(module, FEATURE_LAYER, **kwargs, **common)


def _merged(data: RunData) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """skada's layout (source_target_merge): images, labels (-1 on the target), sample_domain."""
    from skada.utils import source_target_merge

    assert data.src_train.labels is not None
    src = data.src_train.floats().numpy()
    tgt = data.tgt_train.floats().numpy()
    domains = np.concatenate([np.full(len(src), SOURCE_DOMAIN), np.full(len(tgt), TARGET_DOMAIN)])
    x, y, _ = source_target_merge(src, tgt, data.src_train.labels.cpu().numpy(), None, sample_domain=domains)
    return x, y.astype(np.int64), domains


def train_peer(run: PeerRun, device: torch.device, threads: Optional[int] = None) -> Dict[str, Any]:
    """Train one peer run and score it: metrics.json's contents."""
    wall = time.perf_counter()
    used_threads = configure_threads(threads, False)
    data = prepare_data(run.config)  # skada reads NumPy; skorch moves batches to `device`
    if data.tgt_test is None or data.tgt_test.labels is None:
        raise ValueError(f"{run.name}: the target has no labelled test set to score on")
    x, y, domains = _merged(data)
    with _seeded_globals(run.config.seed):
        net = build_net(run.peer, data, run.epochs, run.config.seed, device, backbone=run.config.backbone,
                        weights=run.config.weights, lr=run.lr, reg=run.reg)
        fit_start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # skorch's and torch's notes on skada's internals
            net.fit(x, y, sample_domain=domains)
        fit_seconds = time.perf_counter() - fit_start
        test = data.tgt_test.floats().numpy()
        target_pred = net.predict(test, sample_domain=np.full(len(test), TARGET_DOMAIN))
        tgt = data.tgt_train.floats().numpy()
        train_pred = net.predict(tgt, sample_domain=np.full(len(tgt), TARGET_DOMAIN))
        proba = net.predict_proba(tgt, sample_domain=np.full(len(tgt), TARGET_DOMAIN))
        features = net.predict_features(tgt)
    classes = np.unique(data.src_train.labels.cpu().numpy())  # type: ignore[union-attr]
    truth = data.tgt_test.labels.cpu().numpy()
    features = np.asarray(features, dtype=np.float32)
    scores = peer_scores(classes[train_pred], np.asarray(proba, dtype=np.float64), features, len(classes),
                         run.config.seed)
    accuracy = float((classes[target_pred] == truth).mean())
    history = net.history
    losses = [float(v) for v in history[:, "train_loss"]]
    epoch_seconds = [float(v) for v in history[:, "dur"]]
    if not np.isfinite(losses[-1]):
        log.warning("%s: the final training loss is %s", run.name, losses[-1])
    return {
        "target_accuracy": accuracy,
        "wall_seconds": time.perf_counter() - wall,  # data, training and scoring, as madda_rs runs count it
        "fit_seconds": fit_seconds,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "label_free": scores,  # on the target training images, no label read
        # 'target': the final epoch's evaluation, as madda_rs runs record theirs (report --selection reads it)
        "history": {"train_loss": losses, "seconds": epoch_seconds,
                    "target": [{"epoch": len(losses) - 1, **scores, "target_accuracy": accuracy}]},
        "epochs": len(losses),
        "images": {"source_train": len(data.src_train), "target_train": len(data.tgt_train),
                   "target_test": len(data.tgt_test)},
        "versions": _versions(),
        "device": str(device), "threads": used_threads,
        "machine": machine_record(device),  # wall times compare within one CPU only
    }


def peer_scores(pred: np.ndarray, proba: np.ndarray, features: np.ndarray, n_classes: int,
                seed: int) -> Dict[str, Any]:
    """The label-free scores that need only a run's target predictions, soft predictions and
    features (DEV, the reverse kNN and the source check need the source side a madda_rs run keeps)."""
    scores = label_free_figures(pred, n_classes)
    scores["snd"] = soft_neighbourhood_density(features, rng=numpy_rng(seed, "scores", 0))
    scores["im"] = information_maximisation(proba)
    scores["bnm"] = batch_nuclear_norm(proba)
    scores["entropy"] = mean_entropy(proba)
    scores["class_ami"] = class_ami(features, pred, n_classes, stream_seed(seed, "scores", 2))
    return scores


def _versions() -> Dict[str, str]:
    out = {}
    for name in ("skada", "skorch", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_runnable(runs: Sequence[PeerRun], out: Path) -> List[str]:
    """Each run's :func:`peer_state`, after refusing (before any work) a folder holding another
    run, or a missing skada when some run is still to train."""
    states = [peer_state(out / PEERS_DIR / r.name, r) for r in runs]
    if any(s != "complete" for s in states):
        require_skada()
    return states


def run_peers(runs: Sequence[PeerRun], out: Path, *, device: str = "auto", threads: Optional[int] = None,
              on_run: Optional[Callable[[int, PeerRun, str], None]] = None) -> None:
    """Train what is missing, one run at a time; a complete run (metrics.json present) is skipped."""
    states = check_runnable(runs, out)
    dev = resolve_device(device)
    for i, (run, state) in enumerate(zip(runs, states)):
        if on_run is not None:
            on_run(i, run, state)
        if state == "complete":
            continue
        folder = out / PEERS_DIR / run.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / METRICS_FILE).unlink(missing_ok=True)
        _write_json(folder / CONFIG_FILE, run.record())
        _write_json(folder / METRICS_FILE, train_peer(run, dev, threads))  # last: its presence marks completion


def _write_json(path: Path, values: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    tmp.replace(path)


# --- the table -------------------------------------------------------------------------------


def _mean(values: Sequence[Optional[float]], digits: int) -> Any:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), digits) if values else ""


@dataclass
class _Row:
    label: str
    library: str
    training: str
    target_labels: str
    got: Dict[str, List[Tuple[int, Dict[str, Any]]]] = field(default_factory=dict)  # column label -> (seed, metrics)


def _peer_rows(runs: Sequence[PeerRun], out: Path) -> List[_Row]:
    rows: Dict[Tuple[str, float, Optional[float], str], _Row] = {}
    for run in runs:
        chose = chosen_by(run.peer.slug, run.column, run.lr, run.reg)
        unchosen = chosen_lr(run.peer.slug, run.column) is not None and chose == "none"
        folder = out / PEERS_DIR / run.name
        done = (folder / METRICS_FILE).is_file()
        if unchosen and not done:
            continue
        # a method's runs at a rate or weight it was not chosen at (the presets' 1e-4 and skada's weight, before
        # the choice) get their own row, as do those whose rate another choice made (the pretrained development task)
        weight = f", {run.peer.reg_arg} {run.reg:g}" if run.reg is not None else ""
        default_weight = f", {run.peer.reg_arg} 1" if run.reg is None and chosen_reg(run.peer.slug, run.column) else ""
        label = f"{run.peer.label}, lr {run.lr:g}{weight or default_weight}" if unchosen else run.peer.label
        row = rows.setdefault((run.peer.label, run.lr, run.reg, chose),
                              _Row(label, "skada", f"{run.epochs} epochs, lr {run.lr:g}{weight}", chose))
        if done:
            row.got.setdefault(run.column.label, []).append((run.config.seed, load_run(str(folder))[1]))
    return list(rows.values())


def _madda_rows(table: str, seeds: Sequence[int], out: Path) -> List[_Row]:
    """ADDA and M-ADDA from `table`'s runs in OUT/runs (reproduce's plan names them), each row at
    the schedule its runs have (a table's default one: 'short')."""
    planned = plan(table, seeds, "short")
    spec = {r.label: r for r in TABLES[table].rows}
    rows = []
    for label in (lab for lab in MADDA_ROWS if lab in spec):
        schedule = spec[label].schedule or "short"
        es, et, _ = SCHEDULES["adda"][schedule]
        row = _Row(label, "madda_rs", f"{schedule} ({es}+{et})", row_target_labels(spec[label], schedule))
        for run in planned:
            folder = out / "runs" / run.slug
            for row_label, col_label in run.cells:
                if row_label == label and (folder / METRICS_FILE).is_file():
                    row.got.setdefault(col_label, []).append((run.config.seed, load_run(str(folder))[1]))
        rows.append(row)
    return rows


def unchosen_runs(runs: Sequence[PeerRun]) -> List[PeerRun]:
    """The same runs at the presets' learning rate, for each method the development tasks chose
    another rate for, and at skada's default weight where they chose another weight: the table
    shows them beside the chosen rows where they are complete, and never trains them."""
    before = [replace(r, lr=LR, reg=None, name=run_name(r.peer, r.config, r.epochs)) for r in runs if r.lr != LR]
    return before + [replace(r, reg=None, name=run_name(r.peer, r.config, r.epochs, r.lr)) for r in runs
                     if r.reg is not None]


def build_peers_table(runs: Sequence[PeerRun], out: Path, seeds: Sequence[int],
                      table: str = "table1") -> Tuple[str, List[Dict[str, Any]]]:
    """The markdown table and its CSV rows from the complete peer runs in `runs` (and, where
    complete, their :func:`unchosen_runs`) and `table`'s madda_rs runs of `seeds` in OUT/runs."""
    columns = list(TABLES[table].columns)
    order = list(PEER_NAMES)  # each method's unchosen row right below its chosen one
    peer_runs = sorted(list(runs) + unchosen_runs(runs), key=lambda r: order.index(r.peer.slug))
    rows = _peer_rows(peer_runs, out) + _madda_rows(table, seeds, out)
    header = (["method", "library", "training", "labelled target images that chose the settings"]
              + [c.label for c in columns] + ["mean wall time per run (s)"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    csv_rows: List[Dict[str, Any]] = []
    guarded_cells = 0
    for row in rows:
        cells, walls = [], []
        for col in columns:
            got = sorted(row.got.get(col.label, []), key=lambda g: g[0])
            accs = [m["target_accuracy"] for _, m in got if m.get("target_accuracy") is not None]
            walls += [m["wall_seconds"] for _, m in got]
            mark = guard_mark(guarded_runs([m for _, m in got]))  # madda_rs runs whose guard returned the source model
            guarded_cells += bool(mark)
            cells.append(f"{cell_text(accs)} ({','.join(str(s) for s, _ in got)}){mark}" if accs else "-")
            lf = [m.get("label_free", {}) for _, m in got]
            csv_rows.append({
                "method": row.label, "library": row.library, "training": row.training,
                "target_labels": row.target_labels, "task": col.label, "src": col.src, "tgt": col.tgt,
                "usps_split": col.usps_split, "seeds": " ".join(str(s) for s, _ in got), "runs": len(accs),
                "mean": _mean(accs, 4), "std": round(float(np.std(accs, ddof=1)), 4) if len(accs) > 1 else "",
                "wall_seconds": _mean([m["wall_seconds"] for _, m in got], 1),
                "pred_entropy": _mean([f.get("pred_entropy") for f in lf], 4),
                # SND of each method's own features: peers' LeNet encoder output, M-ADDA's embedding
                "snd": _mean([f.get("snd") for f in lf], 4),
            })
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| {row.label} | {row.library} | {row.training} | {row.target_labels} | "
                     + " | ".join(cells) + f" | {np.mean(walls):.0f} |")
    recorded = [m["versions"] for row in rows for got in row.got.values() for _, m in got if "versions" in m]
    caption = _caption(runs, recorded[0] if recorded else _versions(), table) + _machines(rows)
    return "\n".join([caption] + [""] + lines + (["", GUARD_NOTE] if guarded_cells else [])), csv_rows


def _machines(rows: Sequence[_Row]) -> str:
    """The caption's last sentence: which CPUs the wall times come from (runs record theirs)."""
    metrics = [m for row in rows for got in row.got.values() for _, m in got]
    if not metrics:
        return ""
    cpus = sorted({m["machine"]["cpu"] for m in metrics if "machine" in m})
    unrecorded = sum("machine" not in m for m in metrics)
    named = f", on {'; '.join(cpus)}" if cpus else ""
    share = f" (the CPU recorded for {len(metrics) - unrecorded} of the {len(metrics)} runs)" if unrecorded else ""
    return f" Wall times are each run's own{named}{share}: compare them within one CPU only."


def _caption(runs: Sequence[PeerRun], versions: Dict[str, str], table: str = "table1") -> str:
    epochs = sorted({r.epochs for r in runs})
    default = PEER_TABLES[table]
    budget = ", ".join(map(str, epochs)) if epochs else str(default)
    reduced = (f" **Reduced budget: {budget} epochs instead of {default}** (CPU time)."
               if epochs and max(epochs) < default else "")
    if table != "table1":
        return (
            f"**Peers through their own code (skada {versions['skada']}, skorch {versions['skorch']}) beside "
            f"{TABLES[table].title}.** Final-epoch target test accuracy, mean ± sample std over seeds (seeds in "
            "brackets). Each skada method trains the column's backbone (madda_rs.models.EmbeddingNet, one output per "
            "class; skada's feature layer is the backbone's output), started from the weights a madda_rs run of the "
            "same seed starts from, on the images that run trains and scores on, at skada's defaults, Adam with "
            f"betas ({BETAS[0]}, {BETAS[1]}), batches of {BATCH_SIZE} + {BATCH_SIZE} images, "
            f"{max(epochs or [default])} epochs (the M-ADDA rows' passes; a tenth of them for a synth-digits "
            "source), no validation split or early stopping, and the learning rate its 'training' cell names, chosen "
            "on the development tasks with LeNet (results/peers-dev.md) and carried to these backbones unchanged, "
            "or, where the labels cell names the pretrained development task, chosen there for the pretrained "
            "columns (results/peers-dev-pretrained.md); every adaptation weight (skada's reg) at skada's default, "
            "its choice on the development tasks being LeNet's."
            f"{reduced} The madda_rs rows are the table's runs (results/runs/).")
    lr = f"{LR:g}"
    can = CAN_NOTE if any(r.peer.factory == "CAN" for r in runs) else ""
    return (
        f"**Peers through their own code (skada {versions['skada']}, skorch {versions['skorch']}), ADDA protocol.** "
        "Final-epoch target test accuracy, mean ± sample std over seeds (seeds in brackets). Each skada method "
        "trains ADDA's LeNet (madda_rs.models.EmbeddingNet, one output per class; skada's feature layer is the "
        "500-d encoder output ADDA's discriminator sees), started from the weights a madda_rs run of the same seed "
        "starts from, on the images that run trains and scores on (madda_rs.data.run_data.prepare_data), at "
        f"skada's defaults, with one optimiser for all: Adam, betas ({BETAS[0]}, {BETAS[1]}) (the presets'), "
        f"batches of {BATCH_SIZE} source + {BATCH_SIZE} target images, {budget} epochs (the improved preset's "
        f"{PRESETS['improved']['epochs_source']} + {PRESETS['improved']['epochs_target']} passes), no validation "
        f"split or early stopping, and the learning rate (and, where named, the adaptation weight, skada's reg; "
        f"else skada's 1) its 'training' cell names: chosen on the development tasks (none targets MNIST or USPS; "
        f"results/peers-dev.md) where the next cell says so, else the presets' {lr}, which no one chose for "
        f"them.{reduced} skada 0.6.0's default domain classifier ends in a softmax "
        "over one output (a constant 1, no gradient), so DANN and CDAN at defaults train as source only and SPA "
        "without its adversarial term; "
        f"the 'sigmoid domain classifier' rows pass the same classifier ending in a sigmoid.{can} The madda_rs rows "
        "are Table 1's runs (results/runs/). Wall time: data, training and scoring of one run on this machine."
    )


def write_peers(runs: Sequence[PeerRun], out: Path, seeds: Sequence[int], figure: bool = True,
                table: str = "table1") -> List[Path]:
    """OUT/peers.md, OUT/peers.csv and (with `figure`) OUT/peers.png (peers-TABLE.* beside another
    table than Table 1); returns the files written."""
    markdown, rows = build_peers_table(runs, out, seeds, table)
    out.mkdir(parents=True, exist_ok=True)
    stem = "peers" if table == "table1" else f"peers-{table}"
    md, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    md.write_text(markdown + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    written = [md, csv_path]
    if figure:
        from .plots import peers_figure

        png = peers_figure(rows, out / f"{stem}.png")
        written += [png] if png is not None else []
    return written


# --- each peer's learning rate, chosen on the development tasks ------------------------------------


def lr_choice(runs: Sequence[PeerRun], out: Path) -> Dict[str, Any]:
    """peers-dev.json's contents: per method, each learning rate's final-epoch target accuracy on
    every development task (mean over the seeds run), their mean and worst, and the chosen rate,
    the best mean (ties keep the smaller rate); then, at that rate, each adaptation weight's, and
    the chosen weight where one beats skada's default (ties keep the default). A method with any
    run of a step still missing chooses nothing in that step."""
    tasks = list(dict.fromkeys(r.column.label for r in runs))
    got: Dict[str, Dict[Tuple[float, Optional[float]], Dict[str, List[float]]]] = {}
    missing, labels_read = set(), {}
    for run in runs:
        step = got.setdefault(run.peer.slug, {}).setdefault((run.lr, run.reg), {})
        cell = step.setdefault(run.column.label, [])
        folder = out / PEERS_DIR / run.name
        if not (folder / METRICS_FILE).is_file():
            missing.add((run.peer.slug, "rate" if run.reg is None else "weight"))  # the step it belongs to
            continue
        metrics = load_run(str(folder))[1]
        cell.append(metrics["target_accuracy"])
        labels_read[run.column.label] = metrics["images"]["target_test"]

    def rated(per_run: Dict[str, List[float]]) -> Dict[str, Any]:
        per_task = {t: round(float(np.mean(a)), 4) for t, a in per_run.items() if a}
        done = len(per_task) == len(tasks)
        return {"per_task": per_task, "mean": round(float(np.mean(list(per_task.values()))), 4) if done else None,
                "worst": min(per_task.values()) if done else None}

    methods: Dict[str, Any] = {}
    for slug, by_setting in got.items():
        rates = {f"{lr:g}": rated(by_setting[(lr, reg)]) for lr, reg in sorted(by_setting, key=lambda k: k[0])
                 if reg is None}
        weights = {f"{reg:g}": {"lr": lr, **rated(by_setting[(lr, reg)])}
                   for lr, reg in sorted((k for k in by_setting if k[1] is not None), key=lambda k: k[1])}
        chosen = chosen_weight = None
        if (slug, "rate") not in missing and rates:
            best = max(rates.values(), key=lambda r: r["mean"])["mean"]
            chosen = float(next(lr for lr, r in rates.items() if r["mean"] == best))
        at_chosen = {w: r for w, r in weights.items() if r["lr"] == chosen}
        if chosen is not None and (slug, "weight") not in missing and at_chosen:
            default = at_chosen.get("1", rates[f"{chosen:g}"])["mean"]  # skada's weight, run beside the others
            w, best_weight = max(at_chosen.items(), key=lambda item: item[1]["mean"])
            chosen_weight = float(w) if best_weight["mean"] > default and float(w) != 1.0 else None
        methods[slug] = {"method": PEER_NAMES[slug].label, "rates": rates, "chosen_lr": chosen}
        if weights:
            methods[slug].update({"weight_argument": PEER_NAMES[slug].reg_arg, "weights": weights,
                                  "chosen_reg": chosen_weight})
    epochs = sorted({r.epochs for r in runs})
    return {
        "rule": "each method's learning rate: the best mean final-epoch target accuracy over the development "
                "tasks (none targets MNIST or USPS); ties keep the smaller rate. Then, at that rate, its "
                "adaptation weight: one of the weights tried where its mean beats skada's default (1), the best "
                "such; ties keep the default",
        "tasks": tasks, "epochs": epochs, "seeds": sorted({r.config.seed for r in runs}),
        "lrs": sorted({r.lr for r in runs}), "regs": sorted({r.reg for r in runs if r.reg is not None}),
        "labels_read": {"target test images per task": labels_read,
                        "total": int(sum(labels_read.values()))},
        "methods": methods,
    }


def write_peers_dev(runs: Sequence[PeerRun], out: Path, pretrained: bool = False) -> List[Path]:
    """OUT/peers-dev.md and OUT/peers-dev.json (with `pretrained`, peers-dev-pretrained.*): the
    learning-rate choice and its evidence."""
    choice = lr_choice(runs, out)
    tasks = choice["tasks"]
    header = ["method", "lr", "adaptation weight"] + tasks + ["mean", "worst", "chosen"]
    seeds = ", ".join(map(str, choice["seeds"]))
    rated = (f"Final-epoch target test accuracy; {choice['labels_read']['total']:,} labelled development-target "
             "test images rated the choices, no MNIST or USPS label.")
    if pretrained:
        caption = (
            "**Each peer's learning rate for pretrained backbones, chosen on the pretrained development task** "
            f"(`madda-rs reproduce peers-dev-pretrained`; seeds {seeds}; {max(choice['epochs'], default=0)} epochs, "
            "the colour table's runs: fashion-mnist → fashion-m, EfficientNet-Lite0 from its ImageNet weights at "
            "64 x 64, the task that chose M-ADDA's pretrained recipe; Adam, betas and batches as in the peers "
            f"table). {rated} The chosen rate has the best accuracy; it trains the peer on the colour table's "
            "pretrained columns.")
    else:
        caption = (
            f"**Each peer's learning rate, chosen on the development tasks** (`madda-rs reproduce peers-dev`; seeds "
            f"{seeds}; {max(choice['epochs'], default=0)} epochs, {min(choice['epochs'], default=0)} for a "
            "synth-digits source (ten times the images); Adam, betas and batches as in the peers table). "
            f"{rated} The chosen rate has the best mean over the tasks; then, at that rate, each method's "
            "adaptation weight (skada's `reg`; DeepJDOT's `reg_dist`, SPA's `reg_adv`) a decade either side of "
            "skada's default 1, chosen only where its mean beats the default's (the weight-1 row where one ran "
            "beside them, else the rate's row).")
    lines = [caption, "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for slug, method in choice["methods"].items():
        arg, chosen_weight = PEER_NAMES[slug].reg_arg, method.get("chosen_reg")
        candidates = [(lr, f"{arg} 1 (default)" if arg else "-", rate, method["chosen_lr"] is not None
                       and float(lr) == method["chosen_lr"] and chosen_weight is None)
                      for lr, rate in method["rates"].items()]
        candidates += [(f"{rate['lr']:g}", f"{arg} {w}", rate, chosen_weight is not None and float(w) == chosen_weight)
                       for w, rate in method.get("weights", {}).items()]
        for lr, weight, rate, chosen in candidates:
            cells = [f"{rate['per_task'][t]:.3f}" if t in rate["per_task"] else "-" for t in tasks]
            mean = "-" if rate["mean"] is None else f"{rate['mean']:.3f}"
            worst = "-" if rate["worst"] is None else f"{rate['worst']:.3f}"
            lines.append(f"| {method['method']} | {lr} | {weight} | " + " | ".join(cells)
                         + f" | {mean} | {worst} | {'**chosen**' if chosen else ''} |")
    out.mkdir(parents=True, exist_ok=True)
    stem = "peers-dev-pretrained" if pretrained else "peers-dev"
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text("\n".join(lines) + "\n")
    _write_json(js, choice)
    return [md, js]


__all__ = ["PEERS", "PEER_NAMES", "Peer", "PeerRun", "MissingExtraError", "MISSING_EXTRA", "DEFAULT_EPOCHS",
           "PEER_TABLES", "CHOSEN_LR", "CHOSEN_LR_PRETRAINED", "CHOSEN_REG", "DEV_LRS", "DEV_REGS", "DEV_EPOCHS",
           "require_skada", "plan_peers", "plan_peers_dev", "plan_peers_dev_pretrained", "chosen_lr", "chosen_reg",
           "chosen_by", "peer_state", "check_runnable", "run_peers", "train_peer", "build_net", "build_peers_table",
           "write_peers", "lr_choice", "write_peers_dev", "SkadaNet"]
