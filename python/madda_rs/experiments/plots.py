"""Figures of saved runs (`madda-rs plot`): t-SNE of the embeddings before and after adaptation,
curves over the target epochs, accuracy against wall time, and the confusion matrix of the final
target predictions.

    from madda_rs.experiments.plots import plot_runs

    plot_runs(["runs/m2u-s0"])                            # tsne.png, curves.png, confusion.png in the run
    plot_runs(["runs/m2u-s0", "runs/m2u-s1"], "figures")  # one curves.png for both, per-run files beside it

Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through pyplot: no backend
is switched in the caller's process (a notebook keeps its own), nothing needs a display, and a
figure is freed once saved, so a long reproduce job does not accumulate them. Matplotlib, torch
and scikit-learn load inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data import display_name
from ..run.folder import (
    NOT_GROUPED,
    SOURCE_MODEL_FILE,
    TARGET_MODEL_FILE,
    experiment_key,
    load_run,
    saved_method_settings,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data.run_data import RunData
    from ..models import EmbeddingNet

log = logging.getLogger("madda_rs")

# The curves drawn, in panel order, with their titles; a key that no run recorded gets no panel.
CURVES = {
    "target_accuracy": "target test accuracy",
    "holdout_accuracy": "held-out target training accuracy",
    "magnet_loss": "center magnet loss",
    "d_acc": "discriminator accuracy",
    "snd": "SND (label-free)",
    "knn_center_agreement": "kNN / centre agreement (label-free)",
    "pred_entropy": "prediction entropy (label-free)",
    "source_test_accuracy": "source test accuracy",
}
Run = Tuple[Dict[str, Any], Dict[str, Any]]  # (config.json, metrics.json)


FIGURES = ("curves", "time", "tsne", "confusion")


def plot_runs(run_dirs: Sequence[str], out: Optional[str] = None, *, tsne_points: int = 1000, device: str = "cpu",
              data_dir: Optional[str] = None, figures: Sequence[str] = FIGURES) -> List[Path]:
    """Draw the figures of finished runs; returns the PNG files written.

    With `out` None, each run gets tsne.png, curves.png and confusion.png in its own folder. With
    `out` (created if needed), one curves.png there compares all runs, seeds of one experiment
    drawn as a mean line in a min-max band, time.png their accuracy against wall time, and each
    run adds <run folder name>-tsne.png and <run folder name>-confusion.png.

    `figures` names the kinds to draw (of :data:`FIGURES`; time.png only with `out`). A figure a
    run lacks the data for is left out: no t-SNE without source.pt and target.pt or
    when the run's images cannot be rebuilt from its config (a run trained on in-memory images;
    logged as a warning), no confusion matrix without metrics.json's 'confusion', no curves
    without target epochs. The t-SNE rebuilds the data on `device` ('cpu', 'cuda' or 'auto'),
    from `data_dir` when given, and embeds at most `tsne_points` images per domain.

    Raises:
        FileNotFoundError: a run folder lacks config.json or metrics.json (checked before any drawing).
        ValueError: two runs share a folder name while `out` is given (their files would collide).
    """
    if tsne_points < 1:
        raise ValueError(f"tsne_points must be at least 1, got {tsne_points}")
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figures {unknown}; expected some of {', '.join(FIGURES)}")
    runs = [(Path(d).resolve(), *load_run(d)) for d in run_dirs]
    names = [run.name for run, _, _ in runs]
    if out is not None and len(set(names)) != len(names):
        raise ValueError(f"run folders with one name would overwrite each other's figures in {out}: {names}")
    written: List[Optional[Path]] = []  # None: a figure left out
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        if "curves" in figures:
            written.append(curves_figure([(c, m) for _, c, m in runs], Path(out) / "curves.png"))
        if "time" in figures:
            written.append(time_figure([(c, m) for _, c, m in runs], Path(out) / "time.png"))
    for run, config, metrics in runs:
        where = {name: run / name if out is None else Path(out) / f"{run.name}-{name}"
                 for name in ("curves.png", "tsne.png", "confusion.png")}
        if out is None and "curves" in figures:
            written.append(curves_figure([(config, metrics)], where["curves.png"]))
        if "tsne" in figures:
            written.append(run_tsne(run, config, where["tsne.png"], tsne_points, device, data_dir))
        if "confusion" in metrics and "confusion" in figures:
            written.append(confusion_figure(metrics["confusion"], metrics["classes"], where["confusion.png"],
                                            f"{_title(config)}, seed {config['seed']}"))
    return [p for p in written if p is not None]


def tsne_figure(source_model: EmbeddingNet, target_model: EmbeddingNet, data: RunData, config: Dict[str, Any],
                path: Path | str, tsne_points: int = 1000) -> Path:
    """t-SNE of source training and target test embeddings, coloured by class, in two panels:
    'before adaptation' (the source model embeds both domains) and 'after adaptation' (the
    target model embeds the target). `config` is the run's config.json.

    At most `tsne_points` images per domain are drawn, and t-SNE is initialised, from the run's
    'figures' stream. The centres (stars) are those the run's method pulled the target to at its
    last epoch (:meth:`madda_rs.methods.Method.centres`: for M-ADDA class means, or KMeans from
    the run's 'centers' stream, white as KMeans centres carry no class); ADDA and runs without
    the magnet have none.
    Target points are grey without a labelled target test set (the training images are drawn)."""
    if tsne_points < 1:
        raise ValueError(f"tsne_points must be at least 1, got {tsne_points}")
    import torch
    from matplotlib.lines import Line2D
    from sklearn.manifold import TSNE

    from ..config import TrainConfig
    from ..methods import get_method
    from ..run.streams import numpy_rng, stream_seed
    from ..scores.predictors import embed

    src, tgt = data.src_train, data.tgt_test if data.tgt_test is not None else data.tgt_train
    assert src.labels is not None
    settings = TrainConfig.from_dict(config)
    rng = numpy_rng(settings.seed, "figures", 0)
    src_keep = np.sort(rng.permutation(len(src))[:tsne_points])
    tgt_keep = np.sort(rng.permutation(len(tgt))[:tsne_points])
    src_labels = src.labels.cpu().numpy()
    tgt_labels = None if tgt.labels is None else tgt.labels.cpu().numpy()[tgt_keep]
    src_emb = embed(source_model, src)  # all of them: the centres are computed over all
    classes = np.unique(src_labels if tgt_labels is None else np.concatenate([src_labels, tgt_labels]))
    found = get_method(settings.method).centres(settings, src_emb, src_labels)
    centers, center_labels = found if found is not None else (np.zeros((0, src_emb.shape[1]), np.float32), None)

    fig = _figure(figsize=(13, 6))
    axes = fig.subplots(1, 2)
    tgt_images = tgt.take(torch.from_numpy(tgt_keep))
    for ax, (title, model) in zip(axes, (("before adaptation", source_model), ("after adaptation", target_model))):
        points = np.concatenate([src_emb[src_keep], embed(model, tgt_images), centers])
        # perplexity must stay below the number of points: tiny runs and tests have few
        xy = TSNE(2, perplexity=min(30.0, (len(points) - 1) / 3), init="pca",
                  random_state=stream_seed(settings.seed, "figures", 1) % 2**32).fit_transform(points)
        n_src = len(src_keep)
        ax.scatter(*xy[:n_src].T, c=_colours(src_labels[src_keep], classes), marker="o", s=8, alpha=0.6)
        tgt_colour = "grey" if tgt_labels is None else _colours(tgt_labels, classes)
        ax.scatter(*xy[n_src : n_src + len(tgt_keep)].T, c=tgt_colour, marker="x", s=10, alpha=0.6)
        if len(centers):
            colour = "white" if center_labels is None else _colours(center_labels, classes)
            ax.scatter(*xy[-len(centers):].T, c=colour, marker="*", s=350, edgecolors="black", linewidths=1.2)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    # grey markers: the points' colours are their classes, shown in the other legend
    kinds = [Line2D([], [], ls="", marker="o", color="grey"), Line2D([], [], ls="", marker="x", color="grey")]
    names = ["source train", "target test" if tgt_labels is not None else "target train"]
    if len(centers):
        kinds.append(Line2D([], [], ls="", marker="*", ms=14, mfc="white", mec="black"))
        names.append("magnet centres")
    axes[0].legend(kinds, names, loc="best", fontsize=8)
    swatches = [Line2D([], [], ls="", marker="o", color=c) for c in _colours(classes, classes)]
    axes[1].legend(swatches, [str(c) for c in classes], title="class", fontsize=7, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{_title(config)}, seed {config['seed']}: t-SNE of embeddings")
    return _save(fig, path)


def curves_figure(runs: Sequence[Run], path: Path | str) -> Optional[Path]:
    """Panels of the CURVES keys that any run recorded, over target epochs (x = epoch + 1). Runs
    whose configs differ only in NOT_GROUPED are one line, the mean over the runs, in a
    min-max band. Returns None (nothing written) when no run recorded any of them."""
    from matplotlib.ticker import MaxNLocator

    groups: Dict[str, List[Run]] = {}
    for config, metrics in runs:
        key = experiment_key(config)
        groups.setdefault(key, []).append((config, metrics))
    histories = [m.get("history", {}).get("target", []) for _, m in runs]
    keys = [k for k in CURVES if any(h.get(k) is not None for hist in histories for h in hist)]
    if not keys:
        log.info("%s not drawn: no run has target epochs with %s", path, ", ".join(CURVES))
        return None
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = _figure(figsize=(5 * cols, 3.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    labels = _group_labels([g[0][0] for g in groups.values()])
    for ax, key in zip(axes, keys):
        for i, (label, group) in enumerate(zip(labels, groups.values())):
            per_run = [{h["epoch"] + 1: h[key] for h in m["history"]["target"] if h.get(key) is not None}
                       for _, m in group]
            epochs = sorted({e for r in per_run for e in r})
            if not epochs:
                continue
            y = np.array([[r.get(e, np.nan) for e in epochs] for r in per_run], dtype=float)
            # a fixed colour per group: a group missing from a panel must not shift the others' colours
            line = ax.plot(epochs, np.nanmean(y, axis=0), color=f"C{i % 10}", marker="o" if len(epochs) <= 30 else None,
                           ms=3,
                           label=f"{label} ({len(group)} seed{'s' if len(group) > 1 else ''})")[0]
            if len(group) > 1:
                ax.fill_between(epochs, np.nanmin(y, axis=0), np.nanmax(y, axis=0), color=line.get_color(), alpha=0.2)
        ax.set_title(CURVES[key])
        ax.set_xlabel("target epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    # one legend under the panels: inside one, long labels squeeze the grid
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=9,
               ncols=max(1, min(3, len(groups))))
    return _save(fig, path)


def time_figure(runs: Sequence[Run], path: Path | str) -> Optional[Path]:
    """Target test accuracy against wall time since the run began (data loading included), one
    panel per task, one line per experiment (mean over its seeds of time and accuracy at each
    evaluation; the band spans the seeds' accuracies). Each line starts at the source-only
    accuracy when the source stage ended. None when no run recorded wall times."""
    tasks: Dict[str, Dict[str, List[Run]]] = {}
    for config, metrics in runs:
        if not any("wall_seconds" in h for h in metrics.get("history", {}).get("target", [])):
            continue
        key = experiment_key(config)
        task = f"{display_name(config['src'])} → {display_name(config['tgt'])}"
        tasks.setdefault(task, {}).setdefault(key, []).append((config, metrics))
    if not tasks:
        log.info("%s not drawn: no run recorded wall_seconds", path)
        return None
    fig = _figure(figsize=(6 * len(tasks), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    all_groups = [g for groups in tasks.values() for g in groups]
    labels = dict(zip(all_groups, _group_labels([g[0][0] for groups in tasks.values() for g in groups.values()])))
    # one colour per experiment whatever the task, so a preset reads alike in every panel
    styles: List[Tuple[Tuple[str, str], ...]] = []
    for ax, (task, groups) in zip(axes, sorted(tasks.items())):
        for key, group in groups.items():
            style = tuple(kv for kv in key if kv[0] not in ("src", "tgt"))
            styles += [style] if style not in styles else []
            i = styles.index(style)
            curves = []
            for _, m in group:
                start = [(m["history"]["source"][-1]["wall_seconds"], m["source_only_accuracy"])] if (
                    m["history"].get("source") and "wall_seconds" in m["history"]["source"][-1]
                    and m.get("source_only_accuracy") is not None) else []
                curves.append(start + [(h["wall_seconds"], h["target_accuracy"]) for h in m["history"]["target"]
                                       if "target_accuracy" in h and "wall_seconds" in h])
            n = min(len(c) for c in curves)
            xy = np.array([c[:n] for c in curves], dtype=float)  # runs x points x (time, accuracy)
            line = ax.plot(xy[:, :, 0].mean(0), xy[:, :, 1].mean(0), color=f"C{i % 10}", marker="o", ms=3,
                           label=f"{labels[key]} ({len(group)} seed{'s' if len(group) > 1 else ''})")[0]
            if len(group) > 1:
                ax.fill_between(xy[:, :, 0].mean(0), xy[:, :, 1].min(0), xy[:, :, 1].max(0), color=line.get_color(),
                                alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("wall time since the run began (s)")
        ax.set_ylabel("target test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def peers_figure(rows: Sequence[Dict[str, Any]], path: Path | str) -> Optional[Path]:
    """Target test accuracy against mean wall time per run, one panel per task and USPS split,
    one point per method (its mean over seeds; the bar spans one sample std, cut at 0 and 1). Each
    method keeps one colour and marker in every panel; madda_rs's rows are drawn larger, edged in
    black. `rows` are the CSV rows of ``madda-rs reproduce peers``
    (:func:`madda_rs.experiments.peers.build_peers_table`). None when no row has a result."""
    from matplotlib import colormaps

    done = [r for r in rows if r.get("mean") not in ("", None) and r.get("wall_seconds") not in ("", None)]
    if not done:
        log.info("%s not drawn: no method has a finished run", path)
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ours = {r["method"] for r in rows if r.get("library") == "madda_rs"}
    colours = colormaps["tab20"].colors  # 20 distinct colours: the table has up to 17 rows
    markers = "osD^v<>Ph*Xpd"
    cols = min(2, len(tasks))
    fig = _figure(figsize=(6.5 * cols, 4.4 * -(-len(tasks) // cols)))
    axes = np.atleast_1d(fig.subplots(-(-len(tasks) // cols), cols)).ravel()
    for ax, task in zip(axes, tasks):
        for i, method in enumerate(methods):
            colour, mine = colours[i % len(colours)], method in ours
            got = [r for r in done if r["task"] == task and r["method"] == method]
            for r in got:
                mean = float(r["mean"])
                std = float(r["std"]) if r.get("std") not in ("", None) else 0.0
                # an accuracy lies in [0, 1]: a wide spread (the paper preset's collapses) is cut there
                yerr = [[min(std, mean)], [min(std, 1.0 - mean)]]
                ax.errorbar(float(r["wall_seconds"]), mean, yerr=yerr, color=colour, marker=markers[i % len(markers)],
                            ms=9 if mine else 6, capsize=3, label=method, markeredgecolor="black" if mine else colour,
                            zorder=3 if mine else 2)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("mean wall time per run (s, log scale)")
        ax.set_ylabel("target test accuracy (final epoch)")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    handles: Dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=8,
               ncols=max(1, min(4, len(handles))))
    return _save(fig, path)


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[Any], path: Path | str,
                     title: str = "") -> Path:
    """The confusion matrix (rows: true class, columns: predicted class), coloured by the share
    of each true class, with the counts written in the cells."""
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # an absent class: a row of zeros
    n = len(classes)
    fig = _figure(figsize=(max(5.0, 0.55 * n + 2), max(4.5, 0.5 * n + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8 if n <= 12 else 6,
                color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), [str(c) for c in classes])
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title}: target accuracy {accuracy:.3f}" if title else f"target accuracy {accuracy:.3f}")
    return _save(fig, path)


def run_tsne(run: Path, config: Dict[str, Any], path: Path, tsne_points: int = 1000, device: str = "cpu",
             data_dir: Optional[str] = None) -> Optional[Path]:
    """:func:`tsne_figure` of a run folder (None, with a warning, when its models or images are gone)."""
    missing = [name for name in (SOURCE_MODEL_FILE, TARGET_MODEL_FILE) if not (run / name).is_file()]
    if missing:  # a run committed to git keeps its JSON files only
        log.warning("%s: no t-SNE, %s missing", run, " and ".join(missing))
        return None
    from ..config import TrainConfig
    from ..data.files import DataError
    from ..data.run_data import prepare_data
    from ..run.folder import load_model
    from ..run.processes import resolve_device

    settings = TrainConfig.from_dict(config).replace(device=device, **({"data_dir": data_dir} if data_dir else {}))
    dev = resolve_device(settings.device)
    try:
        data = prepare_data(settings)
    except (ValueError, DataError, FileNotFoundError) as exc:
        log.warning("%s: no t-SNE, its images cannot be rebuilt from config.json (%s)", run, exc)
        return None
    models = load_model(run / SOURCE_MODEL_FILE, dev), load_model(run / TARGET_MODEL_FILE, dev)
    return tsne_figure(*models, data, config, path, tsne_points)


def _figure(figsize: Tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(fig: Figure, path: Path | str) -> Path:
    fig.savefig(path, dpi=120)
    return Path(path)


def _colours(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return cmap(np.searchsorted(classes, labels) % cmap.N)


def _title(config: Dict[str, Any]) -> str:
    task = f"{display_name(config['src'])}→{display_name(config['tgt'])}"
    return f"{task} {config.get('method', 'madda')} {config['preset']}"


def _group_labels(configs: List[Dict[str, Any]]) -> List[str]:
    """Each group's title, plus the settings in which the groups differ (so no two read alike)."""
    from ..config import PRESET_FIELDS, MethodSettings

    # the preset's name already says what its fields (the run's and the method's) hold; list them
    # only where they were overridden
    own = {f.name for c in configs for f in dataclasses.fields(saved_method_settings(c) or MethodSettings)}
    shown = NOT_GROUPED | {"src", "tgt", "method", "preset"} | (set(PRESET_FIELDS) | own) - {
        k for c in configs for k in c.get("overridden", [])}
    keys = sorted({k for c in configs for k in c} - shown)
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    return [_title(c) + "".join(f", {k}={c.get(k)}" for k in varying) for c in configs]


__all__ = ["FIGURES", "plot_runs", "tsne_figure", "curves_figure", "time_figure", "confusion_figure",
           "peers_figure"]
