"""The paper's three tables, each from one call (`madda-rs reproduce table1|table2|table3`).

A table is a grid of rows (methods) by columns (task, USPS split), each cell the final-epoch
target accuracy over seeds. Every run lives in ``OUT/runs/<slug>`` (the slug spells out the
run's settings, so tables share runs: Table 3's "both losses" row is Table 1's M-ADDA run). A run
whose metrics.json exists is complete and skipped; one with a checkpoint is resumed; the rest
start afresh. Only config.json and metrics.json are needed to rebuild the tables, so committing
those (not checkpoints) lets a later session pick up where this one stopped.

Schedules (epochs source + target): ``short`` is what this CPU affords for three seeds;
``paper`` is the preset's 200 + 200. Which one a row used is named in the table. The choice of
``short`` was made on accuracy on target *training* images held out of each run's subset
(``holdout_accuracy``), never on the target test set (docs/results.md).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import PRESET_TARGET_LABELS, PRESETS, USPS_SPLITS, TrainConfig
from ..methods import Method, get_method
from ..run.folder import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, load_run, resume_conflicts, with_run_settings
from .report import last_evaluations_mean

log = logging.getLogger("madda_rs")

# (epochs_source, epochs_target, eval_every) per protocol and schedule. 'quick' is a smoke run.
_PAPER_EPOCHS = (PRESETS["paper"]["epochs_source"], PRESETS["paper"]["epochs_target"], 10)
# 'improved' is the improved preset's own default (its rows always use it, whatever --schedule says).
# 'labelfree' and 'tuned-mnist-usps' likewise are those presets' own.
SCHEDULES: Dict[str, Dict[str, Tuple[int, int, int]]] = {
    "adda": {"short": (40, 20, 2), "paper": _PAPER_EPOCHS, "quick": (1, 2, 1),
             **{p: (PRESETS[p]["epochs_source"], PRESETS[p]["epochs_target"], 2)
                for p in ("improved", "labelfree", "tuned-mnist-usps")}},
    "full": {"short": (10, 10, 2), "paper": _PAPER_EPOCHS, "quick": (1, 2, 1), "improved": (10, 10, 2),
             "labelfree": (10, 10, 2), "tuned-mnist-usps": (10, 10, 2)},
}
# The development suite's schedule: tune's shorter one (madda_rs.methods.madda's search space), so
# the candidates x tasks x seeds grid fits a CPU.
SCHEDULES["adda"]["dev"] = (40, 15, 5)
SCHEDULE_ORDER = ("quick", "dev", "short", "improved", "labelfree", "tuned-mnist-usps", "paper")


@dataclass(frozen=True)
class Column:
    src: str
    tgt: str
    usps_split: str
    protocol: str = "adda"
    settings: Tuple[Tuple[str, Any], ...] = ()  # what the column's task needs beyond the row's settings

    @property
    def label(self) -> str:
        split = f", {self.usps_split} USPS split" if "usps" in (self.src, self.tgt) else ""
        settings = dict(self.settings)
        backbone = f", {settings['backbone']}" if "backbone" in settings else ""
        size = f" at {settings['image_size'][0]}x{settings['image_size'][1]}" if "image_size" in settings else ""
        return f"{self.src.upper()} → {self.tgt.upper()}{split}{backbone}{size}"

    def apply(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        """`settings` with the column's on top: a callable value maps the setting's value (a
        synth-digits source scales the source epochs), any other replaces it."""
        out = dict(settings)
        for key, value in self.settings:
            out[key] = value(out[key]) if callable(value) else value
        return out

    @property
    def folder(self) -> str:
        """Its figures' folder name."""
        backbone = dict(self.settings).get("backbone")
        return f"{self.src}2{self.tgt}-{self.usps_split}" + (f"-{backbone}" if backbone else "")


@dataclass(frozen=True)
class Row:
    label: str
    settings: Dict[str, Any]  # TrainConfig fields that make the row's runs (epochs here override the schedule's)
    paper: Tuple[Optional[float], Optional[float]] = (None, None)  # the paper's figure, MNIST→USPS and USPS→MNIST
    metric: str = "target_accuracy"  # or "source_only_accuracy": the runs' source model before adaptation
    schedule: Optional[str] = None  # a fixed schedule for this row (else --schedule's)
    # column settings the row's runs need (a recipe chosen for pretrained backbones runs on their
    # columns only; its other cells stay '-')
    only: Tuple[Tuple[str, Any], ...] = ()
    chose: Optional[str] = None  # what labelled target data chose the row's settings, where not its preset's
    # the label of a row whose run (same column, same seed) trained the source model this row's run
    # adapts (--source-from): its candidates then differ by their stage 2 alone, as tune's do
    source_row: Optional[str] = None
    # a superseded choice kept on record: its finished runs stay in the table, and reproduce starts
    # no new one (so a table's current rows can be completed without re-running old choices)
    on_record: bool = False

    def runs_on(self, col: "Column") -> bool:
        settings = dict(col.settings)
        return all(settings.get(key) == value for key, value in self.only)


@dataclass(frozen=True)
class Table:
    title: str
    note: str
    rows: Tuple[Row, ...]
    columns: Tuple[Column, ...]


_TASKS = (("mnist", "usps"), ("usps", "mnist"))
_ADDA_COLUMNS = tuple(Column(s, t, split) for split in ("standard", "pooled") for s, t in _TASKS)
_FULL_COLUMNS = tuple(Column(s, t, split, "full") for split in ("standard", "pooled") for s, t in _TASKS)
_ADDA = {"method": "adda"}
_PAPER = {"method": "madda", "preset": "paper"}
_IMPROVED = {"method": "madda", "preset": "improved"}
_IMPROVED_LABEL = "M-ADDA, preset improved (ours)"


def _improved(label: str, changes: Optional[Dict[str, Any]] = None, metric: str = "target_accuracy") -> "Row":
    return Row(label, {**_IMPROVED, **(changes or {})}, metric=metric, schedule="improved")


LABELFREE_LABEL = "M-ADDA, preset labelfree (ours; chosen on the development tasks)"
TUNED_LABEL = "M-ADDA, preset tuned-mnist-usps (madda-rs tune's pick on MNIST ↔ USPS; labelfree until 2026-12-07)"


def _labelfree(label: str = LABELFREE_LABEL, changes: Optional[Dict[str, Any]] = None,
               metric: str = "target_accuracy", preset: str = "labelfree") -> "Row":
    return Row(label, {"method": "madda", "preset": preset, **(changes or {})}, metric=metric, schedule=preset)


def _tuned(label: str = TUNED_LABEL, changes: Optional[Dict[str, Any]] = None,
           metric: str = "target_accuracy") -> "Row":
    return _labelfree(label, changes, metric, "tuned-mnist-usps")


# synth-digits holds 20,000 training images, ten times the ADDA protocol's 2,000 MNIST: a tenth of
# the preset's source epochs gives its source stage as many steps as on MNIST.
def _synth(preset: str) -> Dict[str, Any]:
    return {"epochs_source": max(1, PRESETS[preset]["epochs_source"] // 10)}

TABLES: Dict[str, Table] = {
    "table1": Table(
        "Table 1: ADDA protocol (2,000 MNIST / 1,800 USPS training images)",
        "Paper: M-ADDA Table 1 (source only and ADDA as quoted there from Tzeng et al. 2017).",
        (
            Row("Source only (softmax classifier)", _ADDA, (0.752, 0.571), "source_only_accuracy"),
            Row("Source only (triplet model, kNN)", _PAPER, (None, None), "source_only_accuracy"),
            Row("ADDA", _ADDA, (0.894, 0.901)),
            Row("M-ADDA, preset paper", _PAPER, (0.952, 0.940)),
            Row("M-ADDA, preset official", {"method": "madda", "preset": "official"}, (0.952, 0.940)),
            _improved(_IMPROVED_LABEL),
            _labelfree(),
            _tuned(),
        ),
        _ADDA_COLUMNS,
    ),
    "table2": Table(
        "Table 2: full training sets (60,000 MNIST / all USPS training images)",
        "Paper: M-ADDA Table 2.",
        (
            Row("Source only (softmax classifier)", _ADDA, (None, None), "source_only_accuracy"),
            Row("Source only (triplet model, kNN)", _PAPER, (None, None), "source_only_accuracy"),
            Row("ADDA", _ADDA, (None, None)),
            Row("M-ADDA, preset paper", _PAPER, (0.98, 0.97)),
            _improved(_IMPROVED_LABEL),
            _labelfree(),
            _tuned(),
        ),
        _FULL_COLUMNS,
    ),
    "table3": Table(
        "Table 3: ablations of the target losses (ADDA protocol)",
        "Paper: M-ADDA Table 3. Its M-ADDA row equals its Table 2, so the paper's ablations appear to use the "
        "full training sets; here they use the ADDA protocol (what this CPU affords for three seeds).",
        (
            Row("Center magnet only", {**_PAPER, "adversarial": False}, (0.77, 0.85)),
            Row("Adversarial only", {**_PAPER, "magnet": False}, (0.93, 0.92)),
            Row("Both (M-ADDA, preset paper)", _PAPER, (0.98, 0.97)),
        ),
        _ADDA_COLUMNS,
    ),
    "ablation": Table(
        "Ablation of the improved preset (ADDA protocol, standard USPS split)",
        "Each row takes one ingredient out of `improved` and keeps the rest; same seeds throughout. The "
        "ingredients were chosen on held-out target training images, never on these test sets (docs/presets.md).",
        (
            _improved("Source only (improved preset's source model, kNN)", metric="source_only_accuracy"),
            _improved(_IMPROVED_LABEL),
            _improved("− augmentation", {"augment": False}),
            _improved("− semi-hard negatives (random, as the paper)", {"negatives": "random"}),
            _improved("− cluster labels (nearest centre, Eq. 4)", {"magnet_labels": "nearest"}),
            _improved("− information maximisation", {"im_weight": 0.0}),
            _improved("− mean teacher", {"ema_decay": 0.0}),
            _improved("− adversarial loss", {"adversarial": False}),
            Row("M-ADDA, preset paper (for reference)", _PAPER, (0.952, 0.940)),
        ),
        tuple(c for c in _ADDA_COLUMNS if c.usps_split == "standard"),
    ),
    "synth": Table(
        "Rendered digits as the source: synth-digits (20,000 images from 22 fonts, no human label) to real digits",
        "Source epochs are a tenth of the preset's (synth-digits has ten times the images of the ADDA protocol's "
        "MNIST, so the source stage takes as many steps). The target is the ADDA protocol's subset (2,000 MNIST / "
        "1,800 USPS training images, no label read) and its whole test split scores it.",
        (
            _labelfree("Source only (labelfree's source model, kNN)", _synth("labelfree"), "source_only_accuracy"),
            _labelfree(changes=_synth("labelfree")),
            _tuned("Source only (tuned-mnist-usps's source model, kNN)", _synth("tuned-mnist-usps"),
                   "source_only_accuracy"),
            _tuned(changes=_synth("tuned-mnist-usps")),
            _improved("Source only (improved's source model, kNN; for reference)", _synth("improved"),
                      "source_only_accuracy"),
            _improved("M-ADDA, preset improved (for reference)", _synth("improved")),
        ),
        (Column("synth-digits", "mnist", "standard"), Column("synth-digits", "usps", "standard")),
    ),
}


# The development suite (docs/label-free.md): tasks whose targets are neither MNIST nor USPS, where
# label-free choices may be rated on the targets' own labels. A synth-digits source holds ten times
# the images, so its source epochs are a tenth (as in the synth table); shapes are matched to the source.
def _a_tenth(epochs_source: int) -> int:
    return max(1, epochs_source // 10)


_SYNTH_DEV = (("epochs_source", _a_tenth),)  # a column setting may be a function of the row's value
DEV_COLUMNS = (
    Column("synth-digits", "hand-digits", "standard", settings=_SYNTH_DEV),
    Column("mnist", "hand-digits", "standard"),
    Column("usps", "hand-digits", "standard"),
    Column("fashion-mnist", "fashion-m", "standard"),
    Column("fashion-m", "fashion-mnist", "standard"),
    Column("synth-digits", "seven-segment", "standard", settings=_SYNTH_DEV),
)


def _dev(label: str, preset: str, changes: Optional[Dict[str, Any]] = None, metric: str = "target_accuracy") -> Row:
    return Row(label, {"method": "madda", "preset": preset, "resize_to_source": True, **(changes or {})},
               metric=metric, schedule="dev")


TABLES["devtasks"] = Table(
    "Development tasks: candidate recipes on targets that are neither MNIST nor USPS (ADDA-protocol subsets)",
    "Each row is one candidate the label-free choices (the validators' vote, the labelfree recipe) are rated "
    "on, at tune's 40 + 15 schedule unless the row says 80 + 30; the targets' labels rate them here and nowhere "
    "else. Source epochs are a tenth for a synth-digits source (20,000 images); target images are resized to the "
    "source's shape.",
    (
        _dev("Source only (paper's triplet model, kNN)", "paper", metric="source_only_accuracy"),
        _dev("paper", "paper"),
        _dev("tuned-mnist-usps (labelfree until 2026-12-07)", "tuned-mnist-usps"),
        _dev("tuned-mnist-usps + augmentation", "tuned-mnist-usps", {"augment": True}),
        _dev("improved", "improved"),
        _dev("improved − augmentation", "improved", {"augment": False}),
        _dev("improved − mean teacher", "improved", {"ema_decay": 0.0}),
        _dev("improved − information maximisation", "improved", {"im_weight": 0.0}),
        _dev("improved − adversarial loss", "improved", {"adversarial": False}),
        # labelfree's values, chosen here: one ingredient at a time around the best row above
        # (improved − information maximisation), each value that improved took from labelled
        # MNIST/USPS target images (docs/presets.md) against its alternatives
        _dev("improved − IM − mean teacher", "improved", {"im_weight": 0.0, "ema_decay": 0.0}),
        _dev("improved − IM, mean teacher 0.999", "improved", {"im_weight": 0.0, "ema_decay": 0.999}),
        _dev("improved − IM, random negatives", "improved", {"im_weight": 0.0, "negatives": "random"}),
        _dev("improved − IM, nearest-centre magnet", "improved", {"im_weight": 0.0, "magnet_labels": "nearest"}),
        # the labelfree preset's values (its runs are this row's: the same settings, preset aside)
        replace(_dev("improved − IM at 80 + 30 epochs (= labelfree)", "improved",
                     {"im_weight": 0.0, "epochs_source": 80, "epochs_target": 30}),
                chose=PRESET_TARGET_LABELS["labelfree"]),
    ),
    DEV_COLUMNS,
)


# The stage-2 candidates of the table above, each adapting one source model per task and seed (its
# improved row's stage 1, trained once by a source-only run), as tune's candidates now do: the votes
# are rated here on candidates that differ by their stage 2 alone, not by source models that vary
# as much as the candidates do between reruns of a seed.
_SHARED_SOURCE = "Source model (improved's stage 1, kNN; every row below adapts it)"
TABLES["devtasks-stage2"] = Table(
    "Development tasks, one source model per task and seed: stage-2 candidates adapting it",
    "The first row trains improved's stage 1 alone (a source-only run); every other row adapts that run's "
    "source model (--source-from), so each task and seed's candidates differ by their stage 2 alone, as tune's "
    "candidates within a rung do. tune's 40 + 15 schedule; the targets' labels rate the rows here and nowhere "
    "else. Source epochs are a tenth for a synth-digits source (20,000 images); target images are resized to the "
    "source's shape.",
    (
        _dev(_SHARED_SOURCE, "improved", {"source_only": True}, metric="source_only_accuracy"),
        *(replace(_dev(label, "improved", changes), source_row=_SHARED_SOURCE) for label, changes in (
            ("improved", None),
            ("improved − mean teacher", {"ema_decay": 0.0}),
            ("improved − information maximisation", {"im_weight": 0.0}),
            ("improved − adversarial loss", {"adversarial": False}),
            ("improved − IM − mean teacher", {"im_weight": 0.0, "ema_decay": 0.0}),
            ("improved − IM, mean teacher 0.999", {"im_weight": 0.0, "ema_decay": 0.999}),
            ("improved − IM, nearest-centre magnet", {"im_weight": 0.0, "magnet_labels": "nearest"}),
        )),
    ),
    DEV_COLUMNS,
)


# Colour domains (issue 31): MNIST and synth-digits (drawn in colour) resized to mnist-m's 3 x 32 x 32,
# fashion-mnist to fashion-m's; each task on a small ResNet from scratch and on EfficientNet-Lite0 from
# its shipped ImageNet weights, every set at 64 x 64 for it (ImageNet features need more than 32
# pixels). No target label chooses anything: the rows are fixed recipes.
_COLOUR_TASKS = (("mnist", "mnist-m", ()), ("synth-digits", "mnist-m", (("channels", 3),) + _SYNTH_DEV),
                 ("fashion-mnist", "fashion-m", ()))
_COLOUR_BACKBONES = ((("backbone", "resnet-cifar"),),
                     (("backbone", "efficientnet-lite0"), ("weights", "imagenet"), ("image_size", (64, 64))))
COLOUR_COLUMNS = tuple(Column(s, t, "standard", settings=(("resize_to_target", True),) + extra + backbone)
                       for backbone in _COLOUR_BACKBONES for s, t, extra in _COLOUR_TASKS)


# Chosen on devtasks-pretrained, seed 0, before any run of it on MNIST -> mnist-m: the best target
# accuracy there (0.660; without the magnet 0.659, cluster-label magnet 0.556, the paper 0.117), a tie
# within 0.005 going to the candidate that keeps every M-ADDA loss. docs/label-free.md.
# A second round on the same task (rows after labelfree's below: a softmax head in stage 1, the source
# magnet, Adam lr 1e-3, 30 target epochs): a candidate replaces this choice only by beating its 0.660
# there by more than 0.005 (the rule written before the last two had finished).
PRETRAINED_CHOICE = {**_PAPER, "im_weight": 1.0}
PRETRAINED_CHOICE_LABEL = ("M-ADDA, paper + information maximisation (ours; chosen on the pretrained "
                           "development task)")
# The second round's winner by that rule: Adam lr 1e-3 in stage 1 (the best source model of any row),
# the paper's 1e-4 in stage 2. Its row stands beside the first round's, whose runs stay on record.
PRETRAINED_CHOICE_2 = {**PRETRAINED_CHOICE, "lr": 1e-3, "lr_target": 1e-4}
PRETRAINED_CHOICE_2_LABEL = ("M-ADDA, paper + information maximisation, Adam lr 1e-3 in stage 1 (ours; chosen "
                             "on the pretrained development task, second round)")


def _colour(label: str, settings: Dict[str, Any], metric: str = "target_accuracy") -> Row:
    return Row(label, settings, metric=metric, schedule="dev")


TABLES["colour"] = Table(
    "Colour domains: digits and clothes composited onto photographs (ADDA-protocol subsets, 32 x 32 RGB; "
    "64 x 64 for EfficientNet-Lite0)",
    "Every row at tune's 40 + 15 schedule (a tenth of the source epochs for synth-digits' 20,000 images); "
    "sources are resized to the target's 3 x 32 x 32. The photographs are scikit-image's, not BSDS500's, so "
    "published MNIST → MNIST-M figures are anchors, not comparisons: DANN 0.767 (Ganin et al. 2016), DSN 0.832 "
    "(Bousmalis et al. 2016), PixelDA 0.982 (Bousmalis et al. 2017). No label of MNIST or mnist-m chose any "
    "setting; the two rows chosen on target labels name them (fashion-m's, the pretrained development task, "
    "which is also this table's last column). Two superseded choices stay on record at the seeds they ran "
    "(the tuned-mnist-usps preset, labelfree's recipe before the development suite; the pretrained task's "
    "first-round pick); reproduce runs no more of them.",
    (
        _colour("Source only (softmax classifier)", _ADDA, "source_only_accuracy"),
        _colour("Source only (triplet model, kNN)", _PAPER, "source_only_accuracy"),
        _colour("ADDA", _ADDA),
        _colour("M-ADDA, preset paper", _PAPER),
        _colour(LABELFREE_LABEL, {"method": "madda", "preset": "labelfree"}),
        # two superseded choices, on record at the seeds they ran: labelfree's recipe before the
        # development suite, and the pretrained task's first-round pick
        Row(TUNED_LABEL, {"method": "madda", "preset": "tuned-mnist-usps"}, schedule="dev", on_record=True),
        # the best candidate of the pretrained development task (devtasks-pretrained, below), on the
        # pretrained backbone's columns only
        Row(PRETRAINED_CHOICE_LABEL, PRETRAINED_CHOICE, schedule="dev", only=(("weights", "imagenet"),),
            chose="fashion-m test (the dev task), 10,000", on_record=True),
        Row(PRETRAINED_CHOICE_2_LABEL, PRETRAINED_CHOICE_2, schedule="dev", only=(("weights", "imagenet"),),
            chose="fashion-m test (the dev task), 10,000"),
    ),
    COLOUR_COLUMNS,
)


# The development suite's one task on a pretrained backbone (issues 30 and 31): the labelfree recipe
# chosen on the LeNet development tasks collapsed on EfficientNet-Lite0, so candidates for a
# pretrained backbone are rated here, on fashion-m's labels (Fashion-MNIST's, never MNIST's), before
# any of them runs on MNIST -> mnist-m. ADDA, paper and labelfree share the colour table's runs.
PRETRAINED_DEV_COLUMNS = tuple(c for c in COLOUR_COLUMNS
                               if dict(c.settings).get("weights") == "imagenet" and c.tgt == "fashion-m")
TABLES["devtasks-pretrained"] = Table(
    "Development task on a pretrained backbone: candidate M-ADDA recipes, fashion-mnist → fashion-m, "
    "EfficientNet-Lite0 from its ImageNet weights at 64 x 64",
    "Every row at tune's 40 + 15 schedule unless it names another, float32; each row is the paper's recipe, "
    "or a rated row's (the chosen paper + information maximisation, mostly), with one change. "
    "fashion-m's labels (Fashion-MNIST's test images composited onto photographs; neither MNIST nor USPS) rate "
    "them here, so a recipe chosen on this table may run on MNIST → mnist-m.",
    (
        _colour("Source only (triplet model, kNN)", _PAPER, "source_only_accuracy"),
        _colour("ADDA", _ADDA),
        _colour("M-ADDA, preset paper", _PAPER),
        _colour("paper − magnet (adversarial only)", {**_PAPER, "magnet": False}),
        # information maximisation's balance term spreads the targets over the centres
        _colour("paper + information maximisation", PRETRAINED_CHOICE),
        _colour("paper, cluster-label magnet", {**_PAPER, "magnet_labels": "clusters"}),
        _colour("paper, magnet on the fully connected layers only", {**_PAPER, "magnet_scope": "fc"}),
        _colour(LABELFREE_LABEL, {"method": "madda", "preset": "labelfree"}),
        # added after the rows above were measured: ADDA's softmax-trained source model transferred
        # better than the triplet-trained one, so the source stage gains a softmax head beside the triplets
        _colour("Source only (triplet + softmax head, kNN)", {**_PAPER, "source_ce_weight": 1.0},
                "source_only_accuracy"),
        _colour("paper + softmax head in stage 1", {**_PAPER, "source_ce_weight": 1.0}),
        _colour("paper + information maximisation + softmax head in stage 1",
                {**PRETRAINED_CHOICE, "source_ce_weight": 1.0}),
        # DANN, far ahead on both pretrained columns, keeps training on labelled source images while it
        # adapts; the source magnet does so in M-ADDA's own terms (source images pulled to their centres)
        _colour("paper + information maximisation + source magnet in stage 2",
                {**PRETRAINED_CHOICE, "source_magnet_weight": 1.0}),
        # the peers' learning rate was chosen on the development tasks (1e-3 for every skada method
        # that adapts); M-ADDA's is the paper's 1e-4. Both rows above were still rising at epoch 15.
        _colour("paper + information maximisation, Adam lr 1e-3", {**PRETRAINED_CHOICE, "lr": 1e-3}),
        _colour("paper + information maximisation, 30 target epochs", {**PRETRAINED_CHOICE, "epochs_target": 30}),
        # lr 1e-3 trained the best source model of any row (0.456 before adaptation) and then collapsed in
        # stage 2 (0.147): the larger rate for stage 1 alone
        _colour("paper + information maximisation, Adam lr 1e-3 in stage 1, 1e-4 in stage 2", PRETRAINED_CHOICE_2),
    ),
    PRETRAINED_DEV_COLUMNS,
)


@dataclass
class PlannedRun:
    slug: str
    config: TrainConfig
    schedule: str
    cells: List[Tuple[str, str]] = field(default_factory=list)  # (row label, column label) it fills
    source_run: Optional[str] = None  # the slug of the planned run whose source model it adapts
    on_record: bool = False  # every row it fills is kept on record only (Row.on_record): not to be run

    def resolved(self, out: Path) -> TrainConfig:
        """Its config, with the source run's folder under `out` where it adapts one."""
        if self.source_run is None:
            return self.config
        return self.config.replace(source_from=str((out / "runs" / self.source_run).resolve()))


def slug(config: TrainConfig, schedule: str) -> str:
    """A run folder name that spells out what the run computes."""
    method = get_method(config.method)
    variant = method.run_name(config)
    for name in config.overridden:  # an ablation: each setting that departs from its preset
        if name not in ("epochs_source", "epochs_target"):
            value = getattr(config, name)
            flag = name.replace("_", "")
            variant += f"-{'' if value else 'no'}{flag}" if isinstance(value, bool) else f"-{flag}{value:g}" \
                if isinstance(value, float) else f"-{flag}{value}"
    variant += method.variant(config)
    variant += "-sourceonly" if config.source_only else ""  # stage 1 alone: not the adapted run of its settings
    quick = "-quick" if schedule == "quick" else ""
    backbone = f"-{config.backbone}" if config.backbone != "lenet" else ""  # LeNet's runs keep their names
    return (f"{config.src}2{config.tgt}-{config.usps_split}-{config.protocol}{backbone}-{variant}-"
            f"e{config.epochs_source}+{config.epochs_target}-s{config.seed}{quick}")


def plan(table: str, seeds: Sequence[int], schedule: str = "short", *, paper_seeds: Sequence[int] = (),
         splits: Sequence[str] = USPS_SPLITS, **run_settings: Any) -> List[PlannedRun]:
    """Every run `table` needs: each row x column x seed at `schedule`, plus `paper_seeds` at the
    paper's schedule; of the columns with USPS, those on one of `splits`. `run_settings` (device,
    data_dir, threads, ...) go into every config."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    if not seeds:
        raise ValueError("give at least one seed")
    if not splits or set(splits) - set(USPS_SPLITS):
        raise ValueError(f"splits must be among {', '.join(USPS_SPLITS)}, got {', '.join(splits) or 'none'}")
    runs: Dict[str, PlannedRun] = {}
    spec = TABLES[table]
    # the tables are float32 records, whatever this CPU's default precision: they rebuild anywhere
    run_settings = {"precision": "fp32", **run_settings}
    for chosen, sched_seeds in ((schedule, seeds), ("paper", paper_seeds if schedule != "paper" else ())):
        for row in spec.rows:
            if row.schedule is not None and chosen == "paper" and schedule != "paper":
                continue  # a fixed-schedule row has no extra paper-schedule seeds
            sched = row.schedule if row.schedule is not None and chosen != "quick" else chosen
            for col in spec.columns:
                if "usps" in (col.src, col.tgt) and col.usps_split not in splits:
                    continue
                if not row.runs_on(col):
                    continue
                for seed in sched_seeds:
                    config, name = _planned(row, col, seed, sched, run_settings)
                    source_run = None
                    if row.source_row is not None:
                        source = next(r for r in spec.rows if r.label == row.source_row)
                        source_run = _planned(source, col, seed, sched, run_settings)[1]
                        if source_run not in runs:
                            raise ValueError(f"table {table}: row {row.label!r} adapts row {row.source_row!r}'s "
                                             f"source model, which must come before it")
                        name += "-sharedsource"  # not the run of the same settings that trained its own stage 1
                    planned = runs.setdefault(name, PlannedRun(name, config, sched, source_run=source_run,
                                                               on_record=row.on_record))
                    planned.on_record = planned.on_record and row.on_record  # a current row's run is run
                    planned.cells.append((row.label, col.label))
    return list(runs.values())


def _planned(row: Row, col: Column, seed: int, sched: str, run_settings: Dict[str, Any]) -> Tuple[TrainConfig, str]:
    """The config of `row`'s run in `col` at `seed`, and its folder name."""
    es, et, every = SCHEDULES[col.protocol][sched]
    settings = col.apply({"epochs_source": es, "epochs_target": et, **row.settings})
    config = TrainConfig(src=col.src, tgt=col.tgt, usps_split=col.usps_split, protocol=col.protocol, seed=seed,
                         eval_every=every, checkpoint_every=max(every, 5), **settings, **run_settings)
    return config, slug(config, sched)


def run_state(folder: Path, config: TrainConfig) -> str:
    """'complete', 'resume' or 'new'. A folder holding a different run is a ValueError."""
    if (folder / CONFIG_FILE).is_file():
        differ = resume_conflicts(json.loads((folder / CONFIG_FILE).read_text()), config.to_dict())
        if differ:
            raise ValueError(f"{folder} holds a different run (settings {', '.join(differ)} differ); "
                             f"move it away or choose another --out")
    if (folder / METRICS_FILE).is_file():
        return "complete"
    return "resume" if (folder / CHECKPOINT_FILE).is_file() else "new"


def run_all(runs: Sequence[PlannedRun], out: Path, progress: Optional[Callable[..., Any]] = None,
            on_run: Optional[Callable[[int, PlannedRun, str], None]] = None) -> None:
    """Run what is missing, one run at a time (two training processes on one machine slow each
    other far more than twice)."""
    from ..training import train

    for i, run in enumerate(runs):
        folder = out / "runs" / run.slug
        config = run.resolved(out)
        state = run_state(folder, config)
        if run.on_record and state != "complete":
            state = "on record only"
        if on_run is not None:
            on_run(i, run, state)
        if state in ("complete", "on record only"):
            continue
        if state == "resume":
            saved = TrainConfig.load(str(folder / CONFIG_FILE))  # its settings, with this call's run-only ones
            train(with_run_settings(saved, config), str(folder), progress, resume=True)
        else:
            train(config, str(folder), progress, overwrite=True)


def cell_text(values: Sequence[float]) -> str:
    """A table cell: '-', one value, or mean ± sample std, at 3 decimals."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def build_table(table: str, runs: Sequence[PlannedRun], out: Path) -> Tuple[str, List[Dict[str, Any]]]:
    """The markdown table and its CSV rows, from the runs in `runs` that are complete."""
    spec = TABLES[table]
    done: Dict[Tuple[str, str, str], List[Tuple[PlannedRun, Dict[str, Any]]]] = {}
    for run in runs:
        folder = out / "runs" / run.slug
        if not (folder / METRICS_FILE).is_file():
            continue
        metrics = load_run(str(folder))[1]
        for row_label, col_label in run.cells:
            done.setdefault((row_label, col_label, run.schedule), []).append((run, metrics))
    schedules = sorted({r.schedule for r in runs}, key=SCHEDULE_ORDER.index)
    quoted = any(p is not None for row in spec.rows for p in row.paper)  # the paper's columns, where it has them
    header = (["method", "schedule", "labelled target images that chose the settings"] + [c.label for c in spec.columns]
              + (["paper: MNIST → USPS", "paper: USPS → MNIST"] if quoted else []))
    lines = [f"**{spec.title}.** Final-epoch target accuracy, mean ± sample std over seeds (seeds in brackets). "
             + spec.note, "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    rows_csv: List[Dict[str, Any]] = []
    guarded_cells = 0
    for row in spec.rows:
        for sched in schedules:
            labels = row_target_labels(row, row.schedule or sched)
            cells = []
            for col in spec.columns:
                got = done.get((row.label, col.label, sched), [])
                vals = [m[row.metric] for _, m in got if m.get(row.metric) is not None]
                seeds = [r.config.seed for r, _ in got]
                es, et = _epochs(row, col, sched)
                # the guard's fallback made the run's output the source model's (not a source-only row's concern)
                guarded = guarded_runs([m for _, m in got]) if row.metric == "target_accuracy" else 0
                guarded_cells += bool(guarded)
                mark = guard_mark(guarded)
                cells.append(f"{cell_text(vals)} ({','.join(map(str, seeds))}){mark}" if vals else "-")
                last5 = [v for v in (last_evaluations_mean(m) for _, m in got) if v is not None]
                rows_csv.append({
                    "table": table, "method": row.label, "schedule": f"{sched} ({es}+{et})",
                    "target_labels": labels, "task": col.label, "guarded_runs": guarded,
                    "seeds": " ".join(map(str, seeds)), "runs": len(vals),
                    "mean": round(float(np.mean(vals)), 4) if vals else "",
                    "std": round(float(np.std(vals, ddof=1)), 4) if len(vals) > 1 else "",
                    "last5_mean": round(float(np.mean(last5)), 4) if last5 and row.metric == "target_accuracy" else "",
                    "wall_seconds": round(float(np.mean([m["wall_seconds"] for _, m in got])), 1) if got else "",
                })
            if all(c == "-" for c in cells):
                continue
            es, et = _epochs(row, spec.columns[0], sched)
            paper = [f"{p:.3f}" if p is not None else "-" for p in row.paper] if quoted else []
            lines.append(f"| {row.label} | {sched} ({es}+{et}) | {labels} | " + " | ".join(cells + paper) + " |")
    if guarded_cells:
        lines += ["", GUARD_NOTE]
    return "\n".join(lines), rows_csv


GUARD_NOTE = ("† N: in N of the cell's runs the guard found that adaptation merged classes and the run's output is "
              "the source model (metrics.json 'guard').")


def guarded_runs(metrics: Sequence[Dict[str, Any]]) -> int:
    """How many of a cell's runs fell back to the source model (their guard fired)."""
    return sum(1 for m in metrics if m.get("guard"))


def guard_mark(guarded: int) -> str:
    """A cell's ' †N' (GUARD_NOTE) where N > 0 of its runs fell back to the source model, else ''."""
    return f" †{guarded}" if guarded else ""


def _epochs(row: Row, col: Column, schedule: str) -> Tuple[int, int]:
    """(source, target) epochs of a row's runs: the schedule's, unless the row sets its own."""
    es, et, _ = SCHEDULES[col.protocol][schedule]
    return row.settings.get("epochs_source", es), row.settings.get("epochs_target", et)


# The short schedule was chosen on holdout_accuracy (the module doc): labelled target training
# images of MNIST and USPS, so a row at it says so whatever chose its method's own settings.
SHORT_SCHEDULE_LABELS = "held-out target train (the short schedule)"


def row_target_labels(row: Row, schedule: str = "") -> str:
    """What labelled target data chose the row's settings (config.PRESET_TARGET_LABELS; ADDA and
    the paper's presets use none) and, at the short schedule, the schedule."""
    chose = row.chose or PRESET_TARGET_LABELS[row.settings.get("preset", "paper")]
    if schedule == "short":
        return SHORT_SCHEDULE_LABELS if chose == "none" else f"{chose}; {SHORT_SCHEDULE_LABELS}"
    return chose


def write_table(table: str, runs: Sequence[PlannedRun], out: Path) -> Tuple[Path, Path]:
    markdown, rows = build_table(table, runs, out)
    out.mkdir(parents=True, exist_ok=True)  # --no-run into a new folder writes an empty table there
    md, csv_path = out / f"{table}.md", out / f"{table}.csv"
    md.write_text(markdown + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["table"])
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path


def write_figures(table: str, runs: Sequence[PlannedRun], out: Path, *, device: str = "cpu",
                  data_dir: Optional[str] = None, tsne_points: int = 1000) -> List[Path]:
    """Per column of `table`, under OUT/figures/TABLE/: the curves of every method over target
    epochs (mean and band over seeds), each method's confusion matrix at its first seed, and the
    t-SNE before and after adaptation of M-ADDA's first seed while its model files exist (a t-SNE
    takes seconds to minutes; one per column shows what adaptation did)."""
    from .plots import confusion_figure, curves_figure, run_tsne

    spec = TABLES[table]
    written: List[Optional[Path]] = []
    for col in spec.columns:
        mine = [r for r in runs if any(c == col.label for _, c in r.cells) and
                (out / "runs" / r.slug / METRICS_FILE).is_file()]
        if not mine:
            continue
        where = out / "figures" / table / col.folder
        where.mkdir(parents=True, exist_ok=True)
        loaded = {r.slug: load_run(str(out / "runs" / r.slug)) for r in mine}
        written.append(curves_figure(list(loaded.values()), where / "curves.png"))
        seed = min(r.config.seed for r in mine)
        first = [r for r in mine if r.config.seed == seed and r.schedule == mine[0].schedule]
        for r in first:
            metrics = loaded[r.slug][1]
            if "confusion" in metrics:
                written.append(confusion_figure(metrics["confusion"], metrics["classes"],
                                                where / f"{r.slug}-confusion.png", r.slug))
        # the t-SNE of the table's method as written: the first run whose method draws centres,
        # at the paper preset, with none of its switches off
        shown = next((r for r in first if type(get_method(r.config.method)).centres is not Method.centres
                      and r.config.preset == "paper" and not get_method(r.config.method).variant(r.config)),
                     first[0])
        written.append(run_tsne(out / "runs" / shown.slug, loaded[shown.slug][0], where / f"{shown.slug}-tsne.png",
                                tsne_points, device=device, data_dir=data_dir))
    return [p for p in written if p is not None]


__all__ = ["cell_text", "write_figures", "TABLES", "SCHEDULES", "plan", "run_all", "build_table", "write_table",
           "run_state", "slug"]
