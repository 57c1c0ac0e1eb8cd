"""Summaries of saved runs (`madda-rs report`): one row per experiment, accuracy by epoch, and how
well each label-free score picks a checkpoint."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data import HOLDOUT_IMAGES, display_name
from ..run.folder import experiment_key, load_run
from ..scores.label_free import LABELLED_TUNING_SCORES, SELECTION_SCORES

# the direction of every recorded score (+1: higher is better), label-free or not
DIRECTIONS = {**SELECTION_SCORES, **LABELLED_TUNING_SCORES}

# The headline is the final epoch; beside it, the mean of this many last evaluations (steadier).
LAST_EVALUATIONS = 5


def _mean_std(values: Sequence[Optional[float]], digits: int = 3) -> str:
    if any(v is None for v in values):
        return "-"  # no labelled test set
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _protocol(config: Dict[str, Any]) -> str:
    usps = "usps" in (config["src"], config["tgt"])
    return f"{config['protocol']}, {config.get('usps_split', 'standard')} USPS split" if usps else config["protocol"]


def _final_holdout(metrics: Dict[str, Any]) -> Optional[float]:
    scored = [h for h in evaluations(metrics) if "holdout_accuracy" in h]
    return scored[-1]["holdout_accuracy"] if scored else None


def _where(metrics: Dict[str, Any]) -> str:
    n = metrics.get("processes", 1)  # runs saved before it was recorded ran as one process
    return metrics["device"] if n == 1 else f"{metrics['device']}, {n} processes"


def _method_title(config: Dict[str, Any]) -> str:
    """A method's name in tables: its registered name, upper-cased ('ADDA')."""
    return config.get("method", "madda").rsplit(":", 1)[-1].upper()


def summarize(run_dirs: Sequence[str]) -> str:
    """One markdown row per experiment: final-epoch target accuracy (mean ± sample std over
    seeds), source-only accuracy, source accuracy, wall time and seconds per epoch."""
    groups: Dict[Tuple[Any, ...], List[Tuple[Dict[str, Any], Dict[str, Any]]]] = defaultdict(list)
    for d in run_dirs:
        config, metrics = load_run(d)
        # 1 and 2 processes are different experiments
        key = experiment_key(config) + (("processes", json.dumps(metrics.get("processes", 1))),)
        groups[key].append((config, metrics))
    lines = [
        "| task | preset | USPS resize | epochs (src+tgt) | seeds | target accuracy | last 5 evaluations | "
        "held-out target train | source-only | source test | wall s / run | s / source epoch | s / target epoch | "
        "device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for runs in groups.values():
        config = runs[0][0]
        m = [r[1] for r in runs]
        variant = ", ".join(
            ([f"{_method_title(config)} {config['preset']}"] if config.get("method", "madda") != "madda"
             else [config["preset"]])
            + ([] if config["magnet"] else ["no magnet"])
            + ([] if config["adversarial"] else ["no adversarial"])
            + (["source only"] if config["source_only"] else [])
            + [f"{k}={config[k]}" for k in config.get("overridden", []) if k not in ("epochs_source", "epochs_target")]
        )
        per_epoch = [
            "-" if any(x[key] is None for x in m) else f"{np.mean([x[key] for x in m]):.2f}"
            for key in ("seconds_per_source_epoch", "seconds_per_target_epoch")
        ]
        lines.append(
            f"| {display_name(config['src'])} → {display_name(config['tgt'])} ({_protocol(config)}) | {variant} | "
            f"{config['usps_resize']} | {config['epochs_source']}+{config['epochs_target']} | "
            f"{','.join(str(r[0]['seed']) for r in runs)} | {_mean_std([x['target_accuracy'] for x in m])} | "
            f"{_mean_std([last_evaluations_mean(x) for x in m])} | {_mean_std([_final_holdout(x) for x in m])} | "
            f"{_mean_std([x['source_only_accuracy'] for x in m])} | {_mean_std([x['source_accuracy'] for x in m])} | "
            f"{np.mean([x['wall_seconds'] for x in m]):.0f} | {per_epoch[0]} | {per_epoch[1]} | {_where(m[0])} |"
        )
    return "\n".join(lines)


def accuracy_by_epoch(run_dirs: Sequence[str]) -> str:
    """Target accuracy at each recorded epoch, one column per run: where does it level off?"""
    histories = {d: load_run(d)[1]["history"]["target"] for d in run_dirs}
    epochs = sorted({h["epoch"] + 1 for hist in histories.values() for h in hist if "target_accuracy" in h})
    lines = ["| epoch | " + " | ".join(Path(d).name for d in run_dirs) + " |", "|---" * (len(run_dirs) + 1) + "|"]
    for e in epochs:
        cells = []
        for hist in histories.values():
            acc = next((h["target_accuracy"] for h in hist if h["epoch"] + 1 == e and "target_accuracy" in h), None)
            cells.append("" if acc is None else f"{acc:.3f}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluations(metrics: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The target stage's scored epochs (those with figures beyond the losses)."""
    return [h for h in metrics["history"].get("target", []) if "pred_classes" in h]


def last_evaluations_mean(metrics: Dict[str, Any], n: int = LAST_EVALUATIONS) -> Optional[float]:
    """Mean target accuracy over the last `n` evaluations (None without target labels)."""
    acc = [h.get("target_accuracy") for h in evaluations(metrics)[-n:]]
    if not acc or any(a is None for a in acc):
        return metrics.get("target_accuracy")
    return float(np.mean(acc))


def pick(evals: List[Dict[str, Any]], score: str) -> Optional[Dict[str, Any]]:
    """The evaluation `score` rates best (DIRECTIONS gives the direction; the earliest of equals)."""
    rated = [h for h in evals if score in h]
    if not rated:
        return None
    return max(rated, key=lambda h: DIRECTIONS[score] * h[score])


def _spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None  # undefined for constant series
    return float(spearmanr(x, y).statistic)


def _task(config: Dict[str, Any]) -> str:
    """A run's task in selection tables: 'MNIST → USPS (pooled)'."""
    split = config.get("usps_split", "standard")
    usps = "usps" in (config.get("src"), config.get("tgt"))
    name = f"{display_name(config.get('src', '?'))} → {display_name(config.get('tgt', '?'))}"
    return f"{name} ({split})" if usps else name


def selection_table(run_dirs: Sequence[str]) -> str:
    """For each selection score: its rank correlation with target accuracy (pooled over every
    evaluation of every run, and the mean of the per-run correlations), and the mean target
    accuracy of the checkpoint it picks in each run, beside the final epoch and the checkpoint
    picked by the target test labels themselves (an oracle, not a result); then the accuracy of
    its pick task by task. Scores that read labelled target training images come last, marked."""
    runs, tasks = [], []
    for d in run_dirs:
        config, metrics = load_run(d)
        evals = evaluations(metrics)
        if evals and all("target_accuracy" in h for h in evals):
            runs.append(evals)
            tasks.append(_task(config))
    if not runs:
        return "no run has scored evaluations with target labels"
    task_names = sorted(set(tasks))
    lines = [
        f"{len(runs)} runs, {sum(map(len, runs))} evaluations, {len(task_names)} tasks. Each row compares on the "
        "runs that record its score.",
        "",
        "| picked by | runs | Spearman ρ with target accuracy (pooled) | mean ρ within runs | "
        "target accuracy of the pick | final epoch | best on the target test set (oracle) |",
        "|---|---|---|---|---|---|---|",
    ]
    by_task = ["", "Target accuracy of each score's pick, task by task (mean over the task's runs):", "",
               "| picked by | " + " | ".join(task_names) + " |", "|---|" + "---|" * len(task_names)]
    # choosing a run, as madda-rs tune does: among each task's runs, their final evaluations
    across = ["", "Choosing among a task's runs (each run's final epoch, as `madda-rs tune` chooses): the "
              "target accuracy of the run each score picks.", "",
              "| picked by | " + " | ".join(task_names) + " | mean over tasks |",
              "|---|" + "---|" * (len(task_names) + 1)]

    def fmt(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:+.2f}"

    for score in DIRECTIONS:
        mine = [i for i, r in enumerate(runs) if any(score in h for h in r)]
        if not mine:
            continue
        sign = DIRECTIONS[score]  # so that a positive ρ always means "the score picks well"
        name = f"{score} ({'max' if sign > 0 else 'min'})"
        if score in LABELLED_TUNING_SCORES:
            name += f"; labelled: up to {HOLDOUT_IMAGES:,} target training images a run"
        pooled = [(sign * h[score], h["target_accuracy"]) for i in mine for h in runs[i] if score in h]
        within = [_spearman(*zip(*[(sign * h[score], h["target_accuracy"]) for h in runs[i] if score in h]))
                  for i in mine if sum(score in h for h in runs[i]) >= 3]
        within = [w for w in within if w is not None]
        picks = {i: p["target_accuracy"] for i in mine if (p := pick(runs[i], score)) is not None}
        lines.append(f"| {name} | {len(mine)} | "
                     f"{fmt(_spearman([a for a, _ in pooled], [b for _, b in pooled]))} | "
                     f"{fmt(float(np.mean(within)) if within else None)} | {np.mean(list(picks.values())):.4f} | "
                     f"{np.mean([runs[i][-1]['target_accuracy'] for i in mine]):.4f} | "
                     f"{np.mean([max(h['target_accuracy'] for h in runs[i]) for i in mine]):.4f} |")
        cells = [[a for i, a in picks.items() if tasks[i] == t] for t in task_names]
        by_task.append(f"| {name} | " + " | ".join(f"{np.mean(c):.4f}" if c else "-" for c in cells) + " |")
        chosen = []
        for t in task_names:
            finals = [runs[i][-1] for i in range(len(runs)) if tasks[i] == t and score in runs[i][-1]]
            chosen.append(max(finals, key=lambda h: sign * h[score])["target_accuracy"] if len(finals) > 1 else None)
        known = [c for c in chosen if c is not None]
        across.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in chosen)
                      + f" | {np.mean(known):.4f} |" if known else f"| {name} | " + " | ".join("-" for _ in chosen)
                      + " | - |")
    for label, choose in (("final epoch", lambda r: r[-1]), ("oracle (target test labels)",
                                                            lambda r: max(r, key=lambda h: h["target_accuracy"]))):
        cells = [[choose(r)["target_accuracy"] for r, t in zip(runs, tasks) if t == task] for task in task_names]
        by_task.append(f"| {label} | " + " | ".join(f"{np.mean(c):.4f}" for c in cells) + " |")
    for label, choose in (("the mean run", np.mean), ("the best run (oracle)", np.max)):
        finals = [[r[-1]["target_accuracy"] for r, t in zip(runs, tasks) if t == task] for task in task_names]
        cells = [float(choose(f)) if len(f) > 1 else None for f in finals]  # a lone run leaves nothing to choose
        known = [c for c in cells if c is not None]
        across.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
                      + (f" | {np.mean(known):.4f} |" if known else " | - |"))
    return "\n".join(lines + by_task + across)
