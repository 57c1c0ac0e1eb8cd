"""Would a guard on the source test set keep M-ADDA within 0.01 of source only (issue 30)?

    python scripts/guard_rules.py [--runs results/runs] [--out results/guard-rules.md]

Reads the committed run records of the development tasks (targets hand-digits, seven-segment,
fashion-m, fashion-mnist: never MNIST or USPS, whose labels may not choose) for every adapting
M-ADDA run on LeNet outside the `paper` preset whose guard kept the adapted model, and rates one
candidate rule at several thresholds: fall back to the source model when the adapted model's
source test accuracy (label_free.source_test_accuracy, source labels only) falls below a share
of the source model's (source_accuracy). The development targets' labels rate each threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEV_TARGETS = ("hand-digits", "seven-segment", "fashion-m", "fashion-mnist")
SHARES = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def records(runs: Path) -> list:
    """(task, source-test share kept, gain over source only) of each qualifying run."""
    out = []
    for metrics_file in sorted(runs.glob("*/metrics.json")):
        config = json.loads((metrics_file.parent / "config.json").read_text())
        if (config["tgt"] not in DEV_TARGETS or config.get("method") != "madda" or config.get("source_only")
                or config.get("preset") == "paper" or config.get("backbone", "lenet") != "lenet"):
            continue
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("guard"):
            continue  # the class-balance guard already returned the source model
        kept = metrics["label_free"]["source_test_accuracy"] / metrics["source_accuracy"]
        gain = metrics["target_accuracy"] - metrics["source_only_accuracy"]
        out.append((f"{config['src']} → {config['tgt']}", kept, gain))
    return out


def table(rows: list) -> str:
    kept = np.array([r[1] for r in rows])
    gain = np.array([r[2] for r in rows])
    harmful, helpful = gain < -0.01, gain > 0.01
    lines = [f"**A source-test guard on the development tasks** (`python scripts/guard_rules.py`): {len(rows)} "
             f"adapting M-ADDA runs (LeNet, every preset but `paper`, the class-balance guard passed), "
             f"{harmful.sum()} of them more than 0.01 below source only. The rule: fall back to the source "
             "model when the adapted model keeps less than a share of the source model's source test accuracy. "
             "Gains are target accuracy minus source only, rated on the development targets' labels.", "",
             "| fall back below | runs it returns to source | harmful runs caught | helpful runs lost "
             "| mean gain | worst gain |", "|---|---|---|---|---|---|",
             f"| (no rule) | 0 | 0 of {harmful.sum()} | 0 | {gain.mean():.3f} | {gain.min():+.3f} |"]
    for share in SHARES:
        fire = kept < share
        after = np.where(fire, 0.0, gain)
        lines.append(f"| {share:.2f} | {fire.sum()} | {(fire & harmful).sum()} of {harmful.sum()} | "
                     f"{(fire & helpful).sum()} | {after.mean():.3f} | {after.min():+.3f} |")
    lines += ["", "| task | runs | source-test share kept | gain over source only |", "|---|---|---|---|"]
    for task in sorted({r[0] for r in rows}):
        k = np.array([r[1] for r in rows if r[0] == task])
        g = np.array([r[2] for r in rows if r[0] == task])
        lines.append(f"| {task} | {len(k)} | {k.min():.2f} to {k.max():.2f} | {g.min():+.3f} to {g.max():+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of committed run records")
    parser.add_argument("--out", type=Path, default=Path("results/guard-rules.md"), help="markdown to write")
    args = parser.parse_args()
    rows = records(args.runs)
    if not rows:
        raise SystemExit(f"--runs {args.runs}: no development-task M-ADDA run records found")
    args.out.write_text(table(rows))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
