"""``madda-rs tune``: choose a run's settings without a single target label.

Successive halving (Jamieson & Talwalkar 2016) over the method's :func:`search_space`: every candidate trains
at a ninth of its epochs, the best third by the validators' vote go on at a third, the best third
of those at the full schedule, and the best of the last rung is the chosen run. Within a rung,
candidates whose stage 1 reads the same settings share one (``--source-from``), and candidates
are ranked by EnsV (Hu et al. 2024): how often each one's predictions on the target training
images agree with the majority of the rung's candidates. Nothing here reads a target
label (the candidates' test accuracies are copied into tune.json after the choice, for checking
only). docs/label-free.md states the space and the vote, and how the vote was chosen.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backbones import get_backbone
from .config import DERIVED, TrainConfig
from .methods import get_method
from .run.folder import RunFolder, source_conflicts
from .run.precision import resolve_precision
from .run.processes import resolve_device
from .run.streams import numpy_rng
from .scores.label_free import SELECTION_SCORES, ensemble_agreement

# The vote, chosen on the development tasks (results/devtasks-votes.md; none targets MNIST or USPS):
# EnsV had the lowest mean regret of the votes rated there (0.025, against 0.052 for the rank vote
# of IM, BNM and ClassAMI that tune used before) and was chosen on every leave-one-task-out fold.
VOTE = "ensv"
# The rank vote vote_ranks() computes by default (report --selection and the votes' ratings use it).
RANK_VOTE: Tuple[str, ...] = ("im", "bnm", "class_ami")
# Successive halving: rung r trains at ETA^(r - RUNGS + 1) of each candidate's epochs and keeps
# the best 1/ETA for the next rung.
ETA, RUNGS = 3, 3
DEFAULT_CANDIDATES, DEFAULT_BUDGET_MINUTES = 27, 20.0
TUNE_FILE, CANDIDATES_DIR = "tune.json", "candidates"


def candidate_settings(base: TrainConfig, n: int, seed: int) -> List[Dict[str, Any]]:
    """`n` points of the space (all of it when smaller): the base preset's own point first, the
    rest in an order drawn from the 'tune' stream. Settings given on the command line (differing
    from the preset) are held fixed, so their dimension is not searched."""
    fixed = set(base.overridden)
    space = {k: v for k, v in search_space(base).items()
             if not (fixed & ({"epochs_source", "epochs_target"} if k == "schedule" else {k}))}
    grid = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    own = {k: _value(base, k) for k in space}
    rest = [g for g in grid if g != own]
    order = numpy_rng(seed, "tune", 0).permutation(len(rest))
    picks = [own] if own in grid else []
    return picks + [rest[i] for i in order][: max(n - len(picks), 0)]


def search_space(config: TrainConfig) -> Dict[str, Tuple[Any, ...]]:
    """The settings searched for the config's method, each with the values tried (the method's
    :attr:`~madda_rs.methods.Method.search_space`); 'schedule' is (epochs_source, epochs_target)."""
    space = get_method(config.method).search_space
    if not space:
        raise ValueError(f"--method {config.method} declares no search space (Method.search_space); tune has "
                         f"nothing to search")
    return space


def _value(config: TrainConfig, name: str) -> Any:
    return (config.epochs_source, config.epochs_target) if name == "schedule" else getattr(config, name)


def candidate_config(base: TrainConfig, settings: Dict[str, Any], fraction: float = 1.0) -> TrainConfig:
    """The base config with a candidate's settings, its schedule cut to `fraction` (at least one
    epoch a stage), scored once at its last epoch."""
    changes = {k: v for k, v in settings.items() if k != "schedule"}
    src_epochs, tgt_epochs = settings.get("schedule", (base.epochs_source, base.epochs_target))
    changes["epochs_source"] = max(1, round(src_epochs * fraction))
    changes["epochs_target"] = max(1, round(tgt_epochs * fraction))
    changes["eval_every"] = changes["epochs_target"]
    return base.replace(**changes)


def vote_ranks(scores: Sequence[Dict[str, float]], vote: Sequence[str] = RANK_VOTE) -> np.ndarray:
    """Each candidate's mean rank (0: best) under the validators of `vote`, ties sharing their
    mean rank; a candidate missing a score ranks last under it. Only label-free scores count."""
    from scipy.stats import rankdata

    unknown = [v for v in vote if v not in SELECTION_SCORES]
    if unknown:
        raise ValueError(f"the vote may use label-free scores only ({', '.join(SELECTION_SCORES)}); got {unknown}")
    ranks = []
    for name in vote:
        worst = -np.inf
        values = [SELECTION_SCORES[name] * s[name] if np.isfinite(s.get(name, np.nan)) else worst for s in scores]
        ranks.append(rankdata([-v for v in values]) - 1)
    return np.mean(ranks, axis=0)


@dataclass
class _Candidate:
    index: int
    settings: Dict[str, Any]
    rungs: List[Dict[str, Any]] = field(default_factory=list)
    run_dirs: List[str] = field(default_factory=list)
    target_accuracy: List[Optional[float]] = field(default_factory=list)  # never read before the choice
    predictions: Optional[np.ndarray] = None  # its latest run's labels for the target training images


def candidate_predictions(run_dir: str, base: TrainConfig, cache: Dict[str, Any]) -> np.ndarray:
    """A candidate run's labels for the target training images (its method's predictor, its k);
    the image sets are prepared once per tune (`cache`): no candidate setting changes them."""
    from .data.run_data import prepare_data
    from .scores.evaluate import target_predictions

    if "data" not in cache:
        cache["data"] = prepare_data(base)
    return target_predictions(run_dir, cache["data"], base.device)


def ensv_order(alive: Sequence["_Candidate"]) -> np.ndarray:
    """The candidates best first by EnsV among themselves; ties keep the search's order."""
    agreement = ensemble_agreement([c.predictions for c in alive])  # type: ignore[misc]
    for c, a in zip(alive, agreement):
        c.rungs[-1]["ensv"] = round(float(a), 6)
    return np.argsort(-agreement, kind="stable")


def tune(base: TrainConfig, out_dir: str, *, budget_minutes: float = DEFAULT_BUDGET_MINUTES,
         candidates: int = DEFAULT_CANDIDATES, overwrite: bool = False,
         log: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
    """Search, choose, then leave the chosen run's files in `out_dir` beside tune.json; returns
    tune.json's contents. Rungs shrink (best first) when the time spent so far says the budget
    would not hold them, and tune.json records it."""
    from .training import train

    out = Path(out_dir)
    if (out / TUNE_FILE).exists() and not overwrite:
        raise ValueError(f"{out / TUNE_FILE} exists; choose another --out or pass --overwrite")
    RunFolder(out).check_usable(resume=False, overwrite=overwrite)
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    start = time.perf_counter()
    # one precision for every candidate and the chosen run: the device's default, resolved here
    bf16_by_default = get_backbone(base.backbone).cpu_bf16_default
    base = base.replace(precision=resolve_precision(base.precision, resolve_device(base.device), bf16_by_default))
    data_cache: Dict[str, Any] = {}
    pool = [_Candidate(i, s) for i, s in enumerate(candidate_settings(base, candidates, base.seed))]
    alive, notes = list(pool), []
    epoch_seconds: List[float] = []  # seconds per epoch trained (source and target epochs alike) so far
    for rung in range(RUNGS):
        fraction = float(ETA ** (rung - RUNGS + 1))
        if rung > 0:
            keep = max(1, len(alive) // ETA)
            alive = [alive[i] for i in ensv_order(alive)[:keep]]
        # the rung's candidates that trained a stage 1: a later one whose stage 1 would read the same
        # settings adapts that source model (--source-from), so candidates differing in stage 2 alone
        # are compared on one source model and their stage 1 is trained once
        donors: List[Tuple[Dict[str, Any], _Candidate]] = []
        for i, cand in enumerate(alive):
            config = candidate_config(base, cand.settings, fraction)
            donor = next((d for saved, d in donors if not source_conflicts(saved, config)), None)
            if donor is not None:
                config = config.replace(source_from=donor.run_dirs[-1])
            epochs = config.epochs_target + (config.epochs_source if donor is None else 0)
            cost = epochs * (np.mean(epoch_seconds) if epoch_seconds else 0)
            spent = time.perf_counter() - start
            if i > 0 and spent + cost > budget_minutes * 60:
                notes.append(f"rung {rung}: the budget held {i} of {len(alive)} candidates")
                alive = alive[:i]
                break
            run_dir = out / CANDIDATES_DIR / f"c{cand.index:02d}-rung{rung}"
            result = train(config, str(run_dir), overwrite=overwrite)
            epoch_seconds.append(result.wall_seconds / epochs)
            final = result.history["target"][-1] if result.history.get("target") else {}
            cand.rungs.append({"rung": rung, "epochs_source": config.epochs_source,
                               "epochs_target": config.epochs_target, "seconds": round(result.wall_seconds, 1),
                               "source_model_of": None if donor is None else donor.index,
                               "scores": {k: final[k] for k in SELECTION_SCORES if k in final}})
            cand.run_dirs.append(str(run_dir))
            if donor is None:
                donors.append((config.to_dict(), cand))
            cand.predictions = candidate_predictions(str(run_dir), base, data_cache)
            cand.target_accuracy.append(result.target_accuracy)
            log(f"rung {rung} ({fraction:.2g} of the schedule): candidate {cand.index} {_show(cand.settings)} "
                f"in {result.wall_seconds:.0f} s")
    last = [c for c in alive if len(c.rungs) == max(len(c.rungs) for c in alive)]
    chosen = last[int(ensv_order(last)[0])]
    config = candidate_config(base, chosen.settings).replace(eval_every=base.eval_every)
    _leave_chosen_run(chosen, config, out, overwrite, train)
    record = {
        "search_space": {k: list(v) for k, v in search_space(base).items()}, "vote": VOTE, "eta": ETA,
        "rungs": RUNGS, "budget_minutes": budget_minutes, "notes": notes,
        "seconds": round(time.perf_counter() - start, 1),
        "candidates": [{"index": c.index, "settings": c.settings, "rungs": c.rungs} for c in pool],
        "chosen": config.to_dict(), "chosen_index": chosen.index,
        # copied in after the choice, for checking it only: the vote above never read them
        "after_the_choice": {"target_accuracy": {c.index: c.target_accuracy for c in pool}},
    }
    (out / TUNE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _leave_chosen_run(chosen: _Candidate, config: TrainConfig, out: Path, overwrite: bool,
                      train: Callable[..., Any]) -> None:
    """The chosen run in `out`: its full-schedule candidate run's files when it trained one with
    this very config (a rerun would repeat it bit for bit), else a fresh run."""
    done = Path(chosen.run_dirs[-1])
    same = json.loads((done / "config.json").read_text())
    # what training fills in (the class names) and how often it evaluates do not make another run;
    # comparing them retrained every choice, and a rerun without --deterministic need not repeat it
    ignore = ("eval_every", "source_from") + DERIVED  # a shared stage 1 is the same run
    if {k: v for k, v in same.items() if k not in ignore} == \
            {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in ignore}:
        for path in done.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)
        return
    train(config, str(out), overwrite=overwrite)


def _show(settings: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


__all__ = ["search_space", "VOTE", "RANK_VOTE", "ETA", "RUNGS", "candidate_settings", "candidate_config", "vote_ranks",
           "candidate_predictions", "ensv_order", "tune"]
