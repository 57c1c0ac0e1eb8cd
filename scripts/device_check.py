"""The GPU check (issue 31): what a CUDA machine does with madda_rs, in one command, within 8 minutes.

    python scripts/device_check.py --out "$OUT"          # on the CUDA machine (scripts/device_check.sh installs first)
    python scripts/device_check.py --out /tmp/dc --dry   # anywhere: the same steps at 1 + 1 epochs on the CPU

Each step is a madda-rs command in its own process, with its own time limit; its figures
(accuracy, seconds, peak GPU memory, the device) come from the run's metrics.json. The JSON of
figures, ``device_check.json``, is rewritten after every step, so a step that runs out of time
still leaves the others' figures. Exit status 1 when any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 8 * 60  # all steps together


def steps(dry: bool) -> List[Dict[str, Any]]:
    """(name, madda-rs arguments, time limit in seconds) of each step; dry: 1 + 1 epochs, tiny tune."""
    def epochs(source: int, target: int) -> List[str]:
        return ["--epochs-source", str(1 if dry else source), "--epochs-target", str(1 if dry else target)]

    colour = ["--src", "mnist", "--tgt", "mnist-m", "--resize-to-target", "--preset", "paper"]
    return [
        # the improved preset on all 60,000 MNIST / 7,291 USPS images, at reproduce's full schedule (10 + 10)
        dict(name="improved-full-mnist2usps", limit=150,
             args=["train", "--src", "mnist", "--tgt", "usps", "--preset", "improved", "--protocol",
                   "adda" if dry else "full", "--eval-every", "2", *epochs(10, 10)]),
        # the paper's own schedule, 200 + 200 epochs (ADDA protocol)
        dict(name="paper-200+200-mnist2usps", limit=150,
             args=["train", "--src", "mnist", "--tgt", "usps", "--preset", "paper", "--eval-every", "20",
                   *epochs(200, 200)]),
        dict(name="tune-mnist2usps", limit=100,
             args=["tune", "--src", "mnist", "--tgt", "usps", "--preset", "improved", "--budget",
                   "0.05" if dry else "1.2", "--candidates", "2" if dry else "9",
                   *(epochs(1, 1) if dry else [])]),
        dict(name="colour-resnet-cifar-mnist2mnist-m", limit=60,
             args=["train", *colour, "--backbone", "resnet-cifar", *epochs(20, 20)]),
        dict(name="colour-efficientnet-lite0-mnist2mnist-m", limit=60,
             # dry: no target epoch (the adversarial and magnet passes run in every other step)
             args=["train", *colour, "--backbone", "efficientnet-lite0", "--weights", "imagenet", "--image-size",
                   "32" if dry else "64", *(["--epochs-source", "1", "--epochs-target", "0"] if dry else
                                             epochs(10, 10))]),
    ]


def figures(run: Path) -> Dict[str, Any]:
    """A finished run's figures from its records (tune: the chosen run's)."""
    metrics = json.loads((run / "metrics.json").read_text())
    machine = metrics.get("machine", {})
    got = {k: metrics.get(k) for k in ("target_accuracy", "source_only_accuracy", "wall_seconds",
                                       "seconds_per_source_epoch", "seconds_per_target_epoch", "device")}
    got.update({k: machine.get(k) for k in ("gpu", "peak_gpu_memory_gb", "cpu", "torch", "cuda")})
    if (run / "tune.json").is_file():
        tune = json.loads((run / "tune.json").read_text())
        got["tune_chosen_index"] = tune.get("chosen_index")
        got["tune_candidates_run"] = sum(1 for c in tune.get("candidates", []) if c.get("rungs"))
    return got


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "device-check"),
                        help="folder for the runs and device_check.json [default: $OUT]")
    parser.add_argument("--data-dir", default=os.environ.get("MADDA_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--dry", action="store_true", help="1 + 1 epochs on the CPU: the steps, not the figures")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=None,
                        help="also run pytest benches/bench_knn.py (default: on unless --dry)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = ["--device", "cpu"] if args.dry else ["--device", "cuda"]
    record: Dict[str, Any] = {"dry": args.dry, "budget_seconds": BUDGET_SECONDS, "steps": {}}
    began = time.perf_counter()
    failed = False

    def save() -> None:
        record["seconds"] = round(time.perf_counter() - began, 1)
        (out / "device_check.json").write_text(json.dumps(record, indent=2) + "\n")

    for step in steps(args.dry):
        run = out / "runs" / step["name"]
        argv_ = [sys.executable, "-m", "madda_rs", *step["args"], "--data-dir", args.data_dir, "--no-download",
                 "--quiet", "--out", str(run), "--overwrite", *device]
        started = time.perf_counter()
        print(f"[{time.perf_counter() - began:5.0f} s] {step['name']}", flush=True)
        try:
            proc = subprocess.run(argv_, capture_output=True, text=True, timeout=step["limit"] * (5 if args.dry else 1))
            ok = proc.returncode == 0
            result: Dict[str, Any] = figures(run) if ok else {"error": proc.stderr.strip().splitlines()[-1:]}
        except subprocess.TimeoutExpired:
            ok, result = False, {"error": f"over its {step['limit']} s limit"}
        result["step_seconds"] = round(time.perf_counter() - started, 1)
        result["command"] = "madda-rs " + " ".join(step["args"])
        record["steps"][step["name"]] = result
        failed |= not ok
        save()
    if args.bench if args.bench is not None else not args.dry:
        env = dict(os.environ, MADDA_BENCH_QUICK="1" if args.dry else os.environ.get("MADDA_BENCH_QUICK", ""))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "benches/bench_knn.py", "-q", "-p", "no:cacheprovider"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        table = ROOT / "benches" / "results" / ("knn-quick.md" if args.dry else "knn.md")
        record["bench_knn"] = {"passed": proc.returncode == 0, "seconds": round(time.perf_counter() - started, 1),
                               "table": table.read_text() if table.is_file() else None,
                               "tail": proc.stdout.strip().splitlines()[-3:]}
        failed |= proc.returncode != 0
        save()
    print(json.dumps(record["steps"], indent=1))
    print(f"written: {out / 'device_check.json'} ({record['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
