"""The kNN vote's k, chosen on the development tasks (docs/label-free.md): every complete run of
the given devtasks rows re-scored at each k from its saved models (`madda-rs eval --run DIR --k K`'s
code), mean and worst accuracy over the tasks. Development targets only: no MNIST or USPS label.

    python scripts/devtasks_k.py --rows "improved − information maximisation" --ks 1,2,3,5,10,20
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np

from madda_rs.experiments.reproduce import TABLES, plan
from madda_rs.scores.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", required=True, help="devtasks row labels, separated by ';'")
    parser.add_argument("--ks", default="1,2,3,5,10,20")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--table", default=str(ROOT / "results" / "devtasks-k.md"))
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(";")]
    known = {r.label for r in TABLES["devtasks"].rows}
    if set(rows) - known:
        parser.error(f"--rows: unknown {sorted(set(rows) - known)}; devtasks rows: {sorted(known)}")
    ks = [int(k) for k in args.ks.split(",")]
    runs = plan("devtasks", [int(s) for s in args.seeds.split(",")], "short")
    lines = ["# k of the kNN vote on the development tasks", "",
             f"`python scripts/devtasks_k.py --rows \"{args.rows}\" --ks {args.ks} --seeds {args.seeds}`: "
             "each complete run re-scored at each k from its saved models; accuracy on the development "
             "targets' test sets, mean over seeds, then mean and worst over tasks.", ""]
    for row in rows:
        cells: Dict[str, Dict[int, List[float]]] = {}
        for run in runs:
            for label, column in run.cells:
                if label != row:
                    continue
                folder = Path(args.out) / "runs" / run.slug
                if not (folder / "metrics.json").is_file():
                    continue
                for k in ks:
                    acc = evaluate_run(str(folder), k=k)["target_accuracy"]
                    cells.setdefault(column, {}).setdefault(k, []).append(acc)
                print(row, column, run.slug, [round(cells[column][k][-1], 4) for k in ks], flush=True)
        lines += [f"## {row}", "", "| task | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        means = {k: [] for k in ks}
        for column, by_k in cells.items():
            lines.append(f"| {column} ({len(by_k[ks[0]])} runs) | "
                         + " | ".join(f"{np.mean(by_k[k]):.3f}" for k in ks) + " |")
            for k in ks:
                means[k].append(float(np.mean(by_k[k])))
        lines.append("| **mean over tasks** | " + " | ".join(f"**{np.mean(means[k]):.3f}**" for k in ks) + " |")
        lines.append("| worst task | " + " | ".join(f"{min(means[k]):.3f}" for k in ks) + " |")
        lines.append("")
    Path(args.table).write_text("\n".join(lines))
    print(Path(args.table).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
