"""`madda-rs`: train M-ADDA and re-score saved runs.

    madda-rs train --src mnist --tgt usps [--preset paper|official] [--protocol adda|full] ...
    madda-rs eval --run runs/DIR
    madda-rs report runs/*

Exit status 0 on success; otherwise one line on stderr saying why, and status 2 (bad
arguments) or 1 (a failure while running).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

from .config import CENTERS, DEVICES, DOMAINS, MAGNET_SCOPES, NEGATIVES, PRESETS, PROTOCOLS, USPS_RESIZES, TrainConfig


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, refused with a message naming what came."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="madda-rs", description="M-ADDA: metric-learning domain adaptation on digits.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train source and target models and report target accuracy",
        description="Run M-ADDA end to end. Flags left out take the preset's value.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--src", choices=DOMAINS, required=True, help="labelled source domain")
    t.add_argument("--tgt", choices=DOMAINS, required=True, help="unlabelled target domain")
    t.add_argument("--protocol", choices=PROTOCOLS, default="adda",
                   help="'adda': 2,000 MNIST / 1,800 USPS training images (paper Table 1); 'full': all (Table 2)")
    t.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                   help="'paper': the method as written; 'official': the authors' released code")
    t.add_argument("--usps-resize", choices=USPS_RESIZES, default="box20",
                   help="USPS 16x16 -> 28x28: 'box20' resizes to 20x20 and centres it (like MNIST); 'stretch' fills the frame")
    t.add_argument("--epochs-source", type=_non_negative_int, default=200, help="stage 1 epochs (Algorithm 1)")
    t.add_argument("--epochs-target", type=_non_negative_int, default=200, help="stage 2 epochs (Algorithm 2)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="source batch size")
    t.add_argument("--target-batch-size", type=_positive_int, default=50, help="target batch size")
    t.add_argument("--k", type=_positive_int, default=2, help="neighbours in the kNN vote (Algorithm 3)")
    t.add_argument("--seed", type=_non_negative_int, default=0, help="one seed for Python, NumPy, torch and data subsets")
    t.add_argument("--device", choices=DEVICES, default="auto", help="'auto' uses CUDA when present")
    t.add_argument("--data-dir", default=None,
                   help="folder in torchvision's layout (default: $MADDA_DATA_DIR, else ~/.cache/madda_rs)")
    t.add_argument("--no-download", action="store_true", help="never fetch missing data; fail with a message instead")
    t.add_argument("--out", default=None, help="run folder (default: a new folder under runs/)")
    t.add_argument("--negatives", choices=NEGATIVES, default=None, help="triplet negatives (preset: paper random, official violating)")
    t.add_argument("--centers", choices=CENTERS, default=None, help="magnet centers (preset: paper class_means, official kmeans)")
    t.add_argument("--magnet-scope", choices=MAGNET_SCOPES, default=None,
                   help="what the magnet trains: 'model' (paper) or 'fc' layers only (official)")
    t.add_argument("--adversarial-passes", type=_non_negative_int, default=None,
                   help="adversarial passes per target epoch (preset: paper 1, official 3)")
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (all three optimisers)")
    t.add_argument("--lr-discriminator", type=float, default=None, help="discriminator learning rate (default: --lr)")
    t.add_argument("--eval-every", type=_positive_int, default=10, help="record target accuracy every N target epochs")
    t.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch and the native core")
    t.add_argument("--no-magnet", action="store_true", help="ablation: adversarial loss only (Table 3)")
    t.add_argument("--no-adversarial", action="store_true", help="ablation: center magnet only (Table 3)")
    t.add_argument("--source-only", action="store_true", help="baseline: kNN on the source model, no adaptation")
    t.add_argument("--quiet", action="store_true", help="no progress bars or log lines; only the final line")

    e = sub.add_parser("eval", help="re-score a saved run", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--run", required=True, help="a folder written by 'madda-rs train'")
    e.add_argument("--device", choices=DEVICES, default="auto")
    e.add_argument("--data-dir", default=None, help="override the data folder recorded in the run")
    e.add_argument("--k", type=_positive_int, default=None, help="override the run's k in the kNN vote")
    r = sub.add_parser("report", help="summarise saved runs as a markdown table (mean +- std over seeds)")
    r.add_argument("runs", nargs="+", help="run folders written by 'madda-rs train'")
    r.add_argument("--by-epoch", action="store_true", help="instead: target accuracy at each recorded epoch, per run")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_preset(
        args.preset,
        src=args.src,
        tgt=args.tgt,
        protocol=args.protocol,
        usps_resize=args.usps_resize,
        epochs_source=args.epochs_source,
        epochs_target=args.epochs_target,
        batch_size=args.batch_size,
        target_batch_size=args.target_batch_size,
        k=args.k,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        download=not args.no_download,
        negatives=args.negatives,
        centers=args.centers,
        magnet_scope=args.magnet_scope,
        adversarial_passes=args.adversarial_passes,
        lr=args.lr,
        lr_discriminator=args.lr_discriminator,
        eval_every=args.eval_every,
        threads=args.threads,
        magnet=not args.no_magnet,
        adversarial=not args.no_adversarial,
        source_only=args.source_only,
    )


def _default_out(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{config.src}2{config.tgt}-{config.protocol}-{config.preset}-seed{config.seed}-{stamp}"
    return Path("runs") / name


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:  # e.g. --src usps --tgt usps: refused before any work
        parser.error(str(exc))
    from tqdm import tqdm

    from .training import train

    out = Path(args.out) if args.out else _default_out(config)
    progress = None if args.quiet else partial(tqdm, dynamic_ncols=True, leave=True)
    result = train(config, out_dir=str(out), progress=progress)
    if not args.quiet:
        print(
            f"source accuracy {result.source_accuracy:.4f} | source-only target accuracy "
            f"{result.source_only_accuracy:.4f} | {result.wall_seconds:.0f} s on {result.device} | saved to {out}"
        )
    print(f"target accuracy ({config.src} -> {config.tgt}): {result.target_accuracy:.4f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .training import evaluate_run

    scores = evaluate_run(args.run, device=args.device, data_dir=args.data_dir, k=args.k)
    print(f"source accuracy {scores['source_accuracy']:.4f}")
    print(f"target accuracy: {scores['target_accuracy']:.4f}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import accuracy_by_epoch, summarize

    print(accuracy_by_epoch(args.runs) if args.by_epoch else summarize(args.runs))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args, parser)
        if args.command == "report":
            return _report(args)
        return _eval(args)
    except KeyboardInterrupt:
        print("madda-rs: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"madda-rs: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
