"""`madda-rs`: train M-ADDA, resume and re-score saved runs, summarise and plot them, rebuild the
paper's tables.

    madda-rs train --src mnist --tgt usps [--preset paper|official] [--protocol adda|full] ...
    madda-rs train --resume runs/DIR
    madda-rs eval --run runs/DIR [--k K]
    madda-rs tune --src S --tgt T --out DIR [--budget MINUTES]   # settings chosen with no target label
    madda-rs report runs/* [--by-epoch | --selection]
    madda-rs reproduce table1|table2|table3|ablation|synth|devtasks|devtasks-stage2|colour|devtasks-pretrained
                       [--out results] [--seeds 0,1,2] [--quick]
    madda-rs reproduce peers [--out results] [--methods dann,...] [--splits standard]  # skada's methods
    madda-rs reproduce peers-dev [--out results] [--lrs 1e-4,1e-3] [--regs 0.1,10]  # their settings, off MNIST/USPS
    madda-rs reproduce peers-dev-pretrained [--methods dann-sigmoid]  # ... for pretrained backbones
    madda-rs plot runs/DIR... [--out DIR]
    madda-rs predict runs/DIR INPUT... --out FILE   # labels for new images: files, folders, .npz
    madda-rs export runs/DIR --out DIR              # a folder that predicts without the training code

The train and tune flags are generated from the run's settings (:class:`madda_rs.config.TrainConfig`'s
fields) and every method's own (each method's :class:`~madda_rs.config.MethodSettings`; a method
named as FILE.py:NAME adds its own too): a flag left out takes the preset's value (or the
setting's default), and ``--help`` shows every preset's value. Exit status 0 on success;
otherwise one line on stderr saying why, and status 2 (bad arguments, refused before any work)
or 1 (a failure while running).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .config import DEVICES, PRESET_FIELDS, PRESETS, TrainConfig, run_fields
from .data.folders import FolderError

# madda_rs.experiments.reproduce.TABLES's keys (that module imports torch, which the parser should not need)
TABLE_NAMES = ("table1", "table2", "table3", "ablation", "synth", "devtasks", "devtasks-stage2", "colour",
               "devtasks-pretrained")

# Flags of `train` that are not settings of the run. (Which settings a resume may change is
# madda_rs.run.folder.RUN_ONLY.)
_RUN_FLAGS = ("out", "resume", "overwrite", "quiet", "budget", "candidates")


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


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _preset_values(f: "dataclasses.Field[Any]", settings: Optional[type]) -> str:
    """What --help shows in brackets: the value under each preset, or the one default."""
    if settings is not None:  # a method's setting
        values = {p: settings.preset_value(p, f.name) for p in (settings.presets or PRESETS)}
    elif f.name in PRESET_FIELDS:
        values = {name: values[f.name] for name, values in PRESETS.items()}
    else:
        return "" if f.default is None else f"default: {_show(f.default)}"
    if len({_show(v) for v in values.values()}) == 1:
        return f"default: {_show(next(iter(values.values())))}"
    return "; ".join(f"{name}: {_show(v)}" for name, v in values.items())


def _method_settings(argv: Optional[List[str]]) -> List[Tuple["dataclasses.Field[Any]", type, List[str]]]:
    """Every method's settings, once each: (field, the first declaring method's settings class,
    the methods that read it). The registered methods, and one named as FILE.py:NAME or
    MODULE:NAME in `argv` (a bad name is left for the config to refuse)."""
    from .methods import get_method, method_names

    names = list(method_names())
    args = list(argv or [])
    for i, arg in enumerate(args):
        spec = args[i + 1] if arg == "--method" and i + 1 < len(args) else arg.partition("=")[2] \
            if arg.startswith("--method=") else ""
        if ":" in spec:
            try:
                get_method(spec)
            except (ValueError, ImportError, OSError):
                continue
            names.append(spec)
    found: Dict[str, Tuple["dataclasses.Field[Any]", type, List[str]]] = {}
    for name in names:
        settings = get_method(name).settings
        for f in dataclasses.fields(settings):
            _, shown, readers = found.get(f.name, (f, settings, []))
            # --help shows the values of the reader that takes the most presets
            wider = len(settings.presets or PRESETS) > len(shown.presets or PRESETS)
            found[f.name] = (f, settings if wider else shown, readers + [name])
    return list(found.values())


def _add_settings(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> None:
    """The run's settings, then the methods' (a group of their own) as flags."""
    for f in run_fields():
        _add_setting(parser, f)
    group = parser.add_argument_group("method settings", "read by the methods named; any other method refuses them")
    for f, settings, readers in _method_settings(argv):
        _add_setting(group, f, settings, readers)


def _add_setting(parser: Any, f: "dataclasses.Field[Any]", settings: Optional[type] = None,
                 readers: Tuple[str, ...] | List[str] = ()) -> None:
    """One flag for one setting; absent from the namespace unless given."""
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    default = _preset_values(f, settings)
    default = f"{'; '.join(filter(None, ['--method ' + ', '.join(readers) if readers else '', default]))}"
    shown = f"{meta['help']} [{default}]" if default else meta["help"]
    kw: Dict[str, Any] = dict(default=argparse.SUPPRESS, help=shown)
    if meta["choices"]:
        kw["choices"] = meta["choices"]
    elif meta["type"] is None:  # a switch: --x / --no-x
        kw["action"] = argparse.BooleanOptionalAction
    elif meta["type"] is int:
        kw["type"] = _int_at_least(meta["minimum"])
    else:
        kw["type"] = meta["type"]
    if meta["nargs"]:
        kw["nargs"] = meta["nargs"]
    if f.name in ("src", "tgt"):
        kw["required"] = False  # checked in _train: --resume needs neither
    if f.name == "method":
        from .methods import method_names

        kw["help"] = f"{shown}; registered: {', '.join(method_names())}"
    if f.name == "backbone":
        from .backbones import backbone_names

        kw["help"] = f"{shown}; registered: {', '.join(backbone_names())}"
    parser.add_argument(flag, **kw)


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The command line; `argv` only serves to find a method named as FILE.py:NAME, whose
    settings become flags too."""
    parser = argparse.ArgumentParser(prog="madda-rs", description="M-ADDA: metric-learning domain adaptation.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train source and target models and report target accuracy",
        description="Run M-ADDA end to end. Each setting left out takes the preset's value, shown in brackets.",
    )
    _add_settings(t, argv)
    t.add_argument("--out", default=None, help="run folder (default: a new folder under runs/)")
    t.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last checkpoint, with the config saved there; only "
                        "where and how it runs may change (--device, --threads, --data-dir, --no-download, "
                        "--eval-every, --checkpoint-every)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars or log lines; only the final line")

    e = sub.add_parser("eval", help="re-score a saved run")
    e.add_argument("--run", required=True, help="a folder written by 'madda-rs train'")
    e.add_argument("--device", choices=DEVICES, default="auto", help="[default: auto]")
    e.add_argument("--data-dir", default=None, help="override the data folder recorded in the run")
    e.add_argument("--k", type=_int_at_least(1), default=None, help="override the run's k in the kNN vote")
    r = sub.add_parser("report", help="summarise saved runs as a markdown table (mean +- std over seeds)")
    r.add_argument("runs", nargs="+", help="run folders written by 'madda-rs train'")
    r.add_argument("--by-epoch", action="store_true", help="instead: target accuracy at each recorded epoch, per run")
    r.add_argument("--selection", action="store_true",
                   help="instead: how well each label-free score tracks target accuracy, and what it would pick")

    p = sub.add_parser("reproduce", help="run every run a table of the paper (or the improved preset's ablation) "
                       "needs, then write it (markdown, CSV)",
                       description="Runs one at a time under OUT/runs/, skipping complete runs and resuming "
                                   "interrupted ones; writes OUT/TABLE.md, OUT/TABLE.csv and OUT/figures/TABLE/.")
    p.add_argument("table", choices=TABLE_NAMES + ("peers", "peers-dev", "peers-dev-pretrained"),
                   help="a table, or 'peers': skada's deep methods on the same data (needs the peers extra), "
                        "'peers-dev': their learning rates chosen on the development tasks, or "
                        "'peers-dev-pretrained': chosen again for pretrained backbones on the pretrained one")
    p.add_argument("--out", default="results", help="[default: results]")
    p.add_argument("--seeds", type=_seed_list, default=(0, 1, 2), help="comma-separated [default: 0,1,2]")
    p.add_argument("--schedule", choices=("short", "paper"), default="short",
                   help="'short': what a CPU affords for three seeds (docs/results.md); 'paper': 200 + 200 epochs "
                        "[default: short]")
    p.add_argument("--paper-seeds", type=_seed_list, default=(),
                   help="also run these seeds at the paper's schedule, as their own table rows")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 + 2 epochs, the first seed only")
    p.add_argument("--epochs", type=_int_at_least(1), default=None,
                   help="peers only: epochs of every skada method [default: 110, the improved preset's passes; "
                        "55 beside the colour table and for peers-dev-pretrained; peers-dev: 30]")
    p.add_argument("--beside", choices=("table1", "colour"), default="table1",
                   help="peers only: the table whose tasks, backbones and madda_rs rows the peers stand beside; "
                        "'colour' writes OUT/peers-colour.md [default: table1]")
    p.add_argument("--lrs", type=_positive_floats, default=None,
                   help="peers-dev(-pretrained) only: comma-separated learning rates to choose among "
                        "[default: 1e-4,1e-3]")
    p.add_argument("--regs", type=_positive_floats, default=None,
                   help="peers-dev only: comma-separated adaptation weights (skada's reg) each method then tries at "
                        "its chosen rate [default: 0.1,10]")
    p.add_argument("--splits", default="standard,pooled", type=_usps_splits,
                   help="comma-separated USPS splits whose columns to run (the other columns stay '-') "
                        "[default: standard,pooled]")
    p.add_argument("--methods", default=None,
                   help="peers only: comma-separated skada methods (madda_rs.experiments.peers.PEER_NAMES) "
                        "[default: all]")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-run", action="store_true",
                   help="train nothing: write the table (and figures) from the runs already complete in OUT")
    p.add_argument("--tsne-points", type=_int_at_least(1), default=1000,
                   help="images per domain in each t-SNE [default: 1000]")
    p.add_argument("--device", choices=DEVICES, default="auto", help="[default: auto]")
    p.add_argument("--data-dir", default=None, help="folder in torchvision's layout (default: $MADDA_DATA_DIR)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="CPU threads [default: all cores]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    _add_inference_commands(sub, argv)

    g = sub.add_parser("plot", help="figures of saved runs: t-SNE before/after, curves over epochs, accuracy "
                       "against wall time, confusion")
    g.add_argument("runs", nargs="+", help="run folders written by 'madda-rs train'")
    g.add_argument("--out", default=None, help="one folder for all figures (default: each run's own folder)")
    g.add_argument("--device", choices=DEVICES, default="auto", help="[default: auto]")
    g.add_argument("--data-dir", default=None, help="override the data folder recorded in the runs")
    g.add_argument("--figures", type=_figure_list, default=FIGURES,
                   help=f"comma-separated, of {','.join(FIGURES)} (time needs --out) [default: all]")
    return parser


def _add_inference_commands(sub: Any, argv: Optional[List[str]] = None) -> None:
    """`predict` and `export`: using a finished run."""
    q = sub.add_parser("predict", help="label new images with a finished run: one row per image",
                       description="One row per image: its path (or its index in a lone .npz), label (class name), "
                                   "vote_share, centre_distance and unfamiliar (beyond the 99th percentile of the "
                                   "source's own distances to its class centre).")
    q.add_argument("run", help="a folder written by 'madda-rs train'")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (any depth) or .npz files")
    q.add_argument("--out", required=True, help="output file: .csv, .jsonl or .npz (by its suffix)")
    q.add_argument("--k", type=_int_at_least(1), default=None, help="neighbours in the vote [default: the run's]")
    q.add_argument("--threads", type=_int_at_least(1), default=None, help="CPU threads [default: all cores]")
    q.add_argument("--device", choices=DEVICES, default="cpu", help="[default: cpu]")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    u = sub.add_parser(
        "tune", help="choose the settings with no target label (successive halving, validators' vote), then "
                     "train the chosen run", description="Search docs/label-free.md's space by successive halving, "
        "ranking candidates by the label-free validators' vote; writes DIR/tune.json and the chosen run in DIR. "
        "Settings given here are held fixed and not searched.")
    _add_settings(u, argv)
    u.add_argument("--out", required=True, help="the folder for tune.json, the candidates and the chosen run")
    from .tune import DEFAULT_BUDGET_MINUTES, DEFAULT_CANDIDATES

    u.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MINUTES, metavar="MINUTES",
                   help=f"stop adding candidate runs past this many minutes [default: {DEFAULT_BUDGET_MINUTES:g}]")
    u.add_argument("--candidates", type=_int_at_least(1), default=DEFAULT_CANDIDATES,
                   help=f"points of the space the first rung trains [default: {DEFAULT_CANDIDATES}]")
    u.add_argument("--overwrite", action="store_true", help="replace a tune already in --out")
    u.add_argument("--quiet", action="store_true", help="no progress lines; only the chosen settings")

    x = sub.add_parser("export", help="a folder that labels images without madda_rs's training code")
    x.add_argument("run", help="a folder written by 'madda-rs train'")
    x.add_argument("--out", required=True, help="the folder to write (new or empty)")
    x.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files")


# madda_rs.experiments.plots.FIGURES (that module is imported only when drawing)
FIGURES = ("curves", "time", "tsne", "confusion")


def _figure_list(text: str) -> Tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected names from {', '.join(FIGURES)}; got {text!r}")
    return names


def _seed_list(text: str) -> Tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds like 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return seeds


def _settings_given(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _RUN_FLAGS and k != "command"}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The flags given, over the preset's values; refuses unknown domains."""
    from .data.domains import check_domain_name

    given = _settings_given(args)
    for side in ("src", "tgt"):
        if side not in given:
            raise ValueError(f"--{side} is required (a registered domain or an .npz file)")
        try:
            check_domain_name(given[side])
        except ValueError as exc:
            raise ValueError(f"--{side}: {exc}") from None
    config = TrainConfig(**given)
    from .backbones import check_input, get_backbone
    from .data.folders import is_image_folder
    from .data.geometry import resolve_geometry
    from .methods import check_config

    check_config(config)
    if is_image_folder(config.src):  # its geometry is known from the files' headers: check it here
        resolved = resolve_geometry(config, config.threads)
        check_input(get_backbone(config.backbone), (resolved.channels, *resolved.image_size), f"--src {config.src}")
    return config


def _default_out(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    src, tgt = (Path(name).stem for name in (config.src, config.tgt))
    return Path("runs") / f"{src}2{tgt}-{config.protocol}-{config.preset}-seed{config.seed}-{stamp}"


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .run.folder import CONFIG_FILE, RUN_ONLY, RunFolder, with_run_settings

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone checks, prints and writes
    try:
        if args.resume is not None:
            if args.out is not None or args.overwrite:
                raise ValueError("--resume continues the run in its own folder; drop --out and --overwrite")
            extra = sorted(set(_settings_given(args)) - set(RUN_ONLY))
            if extra:
                flags = ", ".join("--" + name.replace("_", "-") for name in extra)
                raise ValueError(f"--resume takes the settings saved with the run; drop {flags}")
            if main_rank:
                RunFolder(args.resume).check_usable(resume=True, overwrite=False)
            config = with_run_settings(TrainConfig.load(str(Path(args.resume) / CONFIG_FILE)), _settings_given(args))
            out = Path(args.resume)
        else:
            config = config_from_args(args)
            out = Path(args.out) if args.out else _default_out(config)
            if main_rank:
                RunFolder(out).check_usable(resume=False, overwrite=args.overwrite)
    except FolderError:  # a bad image folder: main's one line, exit 2
        raise
    except ValueError as exc:  # refused before any work
        parser.error(str(exc))
    from tqdm import tqdm

    from .run.loop import Interrupted
    from .training import train

    progress = None if args.quiet else partial(tqdm, dynamic_ncols=True, leave=True)
    if args.out is None and args.resume is None and "WORLD_SIZE" in os.environ:
        raise ValueError("under torchrun, give --out: each process would otherwise name its own folder")
    try:
        result = train(config, out_dir=str(out), progress=progress, resume=args.resume is not None,
                       overwrite=args.overwrite)
    except Interrupted as exc:
        if main_rank:
            print(f"madda-rs: {exc}; checkpoint saved. Resume with: madda-rs train --resume {out}", file=sys.stderr)
        return 130
    if not main_rank:
        return 0
    if not args.quiet:
        acc = "-" if result.source_accuracy is None else f"{result.source_accuracy:.4f}"
        only = "-" if result.source_only_accuracy is None else f"{result.source_only_accuracy:.4f}"
        print(f"source accuracy {acc} | source-only target accuracy {only} | {result.wall_seconds:.0f} s on "
              f"{result.device} | saved to {out}")
        for warning in result.warnings:
            print(f"warning: {warning}")
    if result.target_accuracy is None:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in result.label_free.items())
        print(f"no labelled target test set; label-free figures ({config.src} -> {config.tgt}): {figures}")
    else:
        print(f"target accuracy ({config.src} -> {config.tgt}): {result.target_accuracy:.4f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .scores.evaluate import evaluate_run

    scores = evaluate_run(args.run, device=args.device, data_dir=args.data_dir, k=args.k)
    if "source_accuracy" in scores:
        print(f"source accuracy {scores['source_accuracy']:.4f}")
    if "target_accuracy" in scores:
        print(f"target accuracy: {scores['target_accuracy']:.4f}")
    else:
        print("label-free figures: " + ", ".join(f"{k} {v:.3g}" for k, v in scores.items()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .experiments.report import accuracy_by_epoch, selection_table, summarize

    if args.by_epoch:
        print(accuracy_by_epoch(args.runs))
    elif args.selection:
        print(selection_table(args.runs))
    else:
        print(summarize(args.runs))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    if args.table in ("peers", "peers-dev", "peers-dev-pretrained"):
        return _reproduce_peers(args)
    from tqdm import tqdm

    from .experiments.reproduce import plan, run_all, write_table

    out = Path(args.out)
    seeds = args.seeds[:1] if args.quick else args.seeds
    schedule = "quick" if args.quick else args.schedule
    settings = {"device": args.device, "data_dir": args.data_dir, "threads": args.threads}
    runs = plan(args.table, seeds, schedule, paper_seeds=() if args.quick else args.paper_seeds,
                splits=args.splits, **settings)
    progress = (lambda **kw: tqdm(leave=False, **kw)) if not args.quiet else None

    def announce(i: int, run: Any, state: str) -> None:
        print(f"[{i + 1}/{len(runs)}] {run.slug}: {'complete, skipped' if state == 'complete' else state}",
              flush=True)

    try:
        if not args.no_run:
            run_all(runs, out, progress, announce)
    finally:  # an interrupted reproduce still writes what is complete
        md, csv_path = write_table(args.table, runs, out)
    print(md.read_text())
    print(f"written: {md}, {csv_path}")
    if args.table in ("devtasks", "devtasks-stage2"):  # rate the label-free votes on the development tasks' runs
        from .experiments.votes import devtasks_votes

        votes = out / f"{args.table}-votes.md"
        votes.write_text(devtasks_votes(args.table, runs, out, plan("devtasks", seeds, schedule, **settings)))
        print(votes.read_text())
        print(f"written: {votes}")
    if not args.no_figures:
        from .experiments.reproduce import write_figures

        for path in write_figures(args.table, runs, out, device=args.device, data_dir=args.data_dir,
                                  tsne_points=args.tsne_points):
            print(f"figure: {path}")
    return 0


def _reproduce_peers(args: argparse.Namespace) -> int:
    from .experiments import peers
    from .experiments.reproduce import TABLES

    dev, pretrained = args.table.startswith("peers-dev"), args.table == "peers-dev-pretrained"
    if args.lrs is not None and not dev:
        raise ValueError("--lrs is for 'reproduce peers-dev'; 'reproduce peers' trains each method at its chosen rate")
    if args.regs is not None and (not dev or pretrained):
        raise ValueError("--regs is for 'reproduce peers-dev'; 'reproduce peers' trains each method at its chosen "
                         "weight")
    if dev and args.beside != "table1":
        raise ValueError(f"--beside is for 'reproduce peers'; 'reproduce {args.table}' runs on development tasks")
    out = Path(args.out)
    seeds = args.seeds[:1] if args.quick else args.seeds
    default_epochs = peers.PEER_TABLES["colour" if pretrained else args.beside]
    epochs = 1 if args.quick else args.epochs or (peers.DEV_EPOCHS if dev and not pretrained else default_epochs)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    settings = {"data_dir": args.data_dir, "threads": args.threads}
    if pretrained:
        runs = peers.plan_peers_dev_pretrained(seeds, epochs, methods, args.lrs or peers.DEV_LRS, **settings)
    elif dev:
        runs = peers.plan_peers_dev(seeds, epochs, methods, args.lrs or peers.DEV_LRS, args.regs or peers.DEV_REGS,
                                    **settings)
    else:
        columns = [c for c in TABLES[args.beside].columns
                   if "usps" not in (c.src, c.tgt) or c.usps_split in args.splits]
        runs = peers.plan_peers(seeds, epochs, methods, columns, **settings)
    if not args.no_run:
        peers.check_runnable(runs, out)  # a missing skada or a clashing folder: refused before any work

    def announce(i: int, run: Any, state: str) -> None:
        print(f"[{i + 1}/{len(runs)}] {run.name}: {'complete, skipped' if state == 'complete' else state}", flush=True)

    try:
        if not args.no_run:
            peers.run_peers(runs, out, device=args.device, threads=args.threads, on_run=announce)
    finally:  # an interrupted reproduce still writes what is complete
        written = (peers.write_peers_dev(runs, out, pretrained) if dev
                   else peers.write_peers(runs, out, seeds, figure=not args.no_figures, table=args.beside))
    print(written[0].read_text())
    print(f"written: {', '.join(map(str, written))}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .experiments.plots import plot_runs

    for path in plot_runs(args.runs, args.out, device=args.device, data_dir=args.data_dir, figures=args.figures):
        print(f"figure: {path}")
    return 0


def _predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    out = Path(args.out)
    if out.suffix not in (".csv", ".jsonl", ".npz"):
        parser.error(f"--out {out}: expected a .csv, .jsonl or .npz file")
    if out.exists() and not args.overwrite:
        parser.error(f"--out {out} exists; choose another file or pass --overwrite")
    from .inference.predict import load_run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run = load_run(args.run, k=args.k, threads=args.threads, device=args.device)
    path, rows = run.predict_files(args.inputs, out)
    print(f"{rows} images labelled: {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .inference.export import export_run

    info = export_run(args.run, args.out, overwrite=args.overwrite)
    onnx = info["onnx"]
    note = ("no ONNX (install onnx for encoder.onnx)" if onnx is None else
            f"encoder.onnx, outputs within {onnx['max_abs_difference']:.1e} of torch's" if onnx["checked"] else
            "encoder.onnx (unchecked: install onnxruntime to compare it with torch)")
    print(f"exported to {args.out}: encoder.pt, {note}; run: python {Path(args.out) / 'predict.py'} INPUT... "
          f"--out FILE")
    return 0


def _tune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .tune import tune

    if not args.budget > 0:
        parser.error(f"--budget must be a positive number of minutes, got {args.budget}")
    try:
        base = config_from_args(args)
    except FolderError:  # a bad image folder: main's one line, exit 2
        raise
    except ValueError as exc:
        parser.error(str(exc))
    log = (lambda line: None) if args.quiet else (lambda line: print(f"tune: {line}", flush=True))
    record = tune(base, args.out, budget_minutes=args.budget, candidates=args.candidates,
                  overwrite=args.overwrite, log=log)
    chosen = record["candidates"][record["chosen_index"]]["settings"]
    print(f"chosen in {record['seconds']:.0f} s, no target label read: "
          + ", ".join(f"{k}={v}" for k, v in chosen.items()) + f" | run and tune.json in {args.out}")
    return 0


def _usps_splits(text: str) -> List[str]:
    """--splits: a comma-separated list of USPS splits."""
    splits = [x.strip() for x in text.split(",") if x.strip()]
    if not splits or set(splits) - {"standard", "pooled"}:
        raise argparse.ArgumentTypeError(f"takes standard and/or pooled, comma-separated; got {text!r}")
    return splits


def _positive_floats(text: str) -> Tuple[float, ...]:
    """--lrs: comma-separated positive numbers."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1e-4,1e-3, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args, parser)
        if args.command == "report":
            return _report(args)
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "predict":
            return _predict(args, parser)
        if args.command == "export":
            return _export(args)
        if args.command == "tune":
            return _tune(args, parser)
        return _eval(args)
    except KeyboardInterrupt:
        print("madda-rs: interrupted", file=sys.stderr)
        return 130
    except FolderError as exc:  # bad input, refused before any training: like a bad argument
        print(f"madda-rs: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"madda-rs: error: {exc}", file=sys.stderr)
        return 1


def command() -> int:
    """The ``madda-rs`` command (and ``python -m madda_rs``): :func:`main` in a process whose own
    top level is guarded, so loader workers may start from a fork server."""
    from .data.images import start_workers_from_a_fork_server

    start_workers_from_a_fork_server()
    return main()


if __name__ == "__main__":
    sys.exit(command())
