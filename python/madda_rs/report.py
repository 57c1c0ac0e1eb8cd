"""Summaries of saved runs: the README's result tables come from here (`madda-rs report`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Settings that do not make two runs different experiments: seeds vary within a group, and the
# rest say where and how a run executed, not what it computed.
NOT_GROUPED = {"seed", "subset_seed", "device", "data_dir", "download", "threads", "deterministic", "eval_every",
               "checkpoint_every", "overridden"}


def load_run(run_dir: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    run = Path(run_dir)
    for name in ("config.json", "metrics.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name} is missing: is {run} a finished 'madda-rs train' run?")
    return json.loads((run / "config.json").read_text()), json.loads((run / "metrics.json").read_text())


def _mean_std(values: Sequence[Optional[float]], digits: int = 3) -> str:
    if any(v is None for v in values):
        return "-"  # no labelled test set
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _domain(name: str) -> str:
    return Path(name).stem if name.endswith(".npz") else name.upper()


def summarize(run_dirs: Sequence[str]) -> str:
    """One markdown row per experiment: final-epoch target accuracy (mean ± sample std over
    seeds), source-only accuracy, source accuracy, wall time and seconds per epoch."""
    groups: Dict[Tuple[Any, ...], List[Tuple[Dict[str, Any], Dict[str, Any]]]] = defaultdict(list)
    for d in run_dirs:
        config, metrics = load_run(d)
        key = tuple(sorted((k, json.dumps(v)) for k, v in config.items() if k not in NOT_GROUPED))
        groups[key].append((config, metrics))
    lines = [
        "| task | preset | USPS resize | epochs (src+tgt) | seeds | target accuracy | source-only | source test | "
        "wall s / run | s / source epoch | s / target epoch | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for runs in groups.values():
        config = runs[0][0]
        m = [r[1] for r in runs]
        variant = ", ".join(
            ([f"{config['method'].upper()} {config['preset']}"] if config.get("method", "madda") != "madda"
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
            f"| {_domain(config['src'])} → {_domain(config['tgt'])} ({config['protocol']}) | {variant} | "
            f"{config['usps_resize']} | {config['epochs_source']}+{config['epochs_target']} | "
            f"{','.join(str(r[0]['seed']) for r in runs)} | {_mean_std([x['target_accuracy'] for x in m])} | "
            f"{_mean_std([x['source_only_accuracy'] for x in m])} | {_mean_std([x['source_accuracy'] for x in m])} | "
            f"{np.mean([x['wall_seconds'] for x in m]):.0f} | {per_epoch[0]} | {per_epoch[1]} | {m[0]['device']} |"
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
