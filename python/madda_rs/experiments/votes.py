"""Choosing the label-free vote where labels may rate it: on the development tasks' candidate runs
(``madda-rs reproduce devtasks``), each candidate vote picks one run per task from the runs' final
label-free figures; its regret is the best run's target accuracy minus the picked run's. The vote
``tune`` should use is the one with the lowest leave-one-task-out regret: chosen on the other
tasks, scored on the one left out (Musgrave et al. 2022; DomainBed keeps such choices apart).

Target labels enter only as the regret, after each vote has picked; no MNIST or USPS label is
read (the development targets are neither).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import SELECTION_SCORES
from ..run.folder import load_run
from ..scores.label_free import ensemble_agreement

if TYPE_CHECKING:
    from .reproduce import PlannedRun

# A run's final figures (label-free scores and, for rating only, target_accuracy).
Final = Dict[str, float]
TUNE_VOTE = ("im", "bnm", "class_ami")  # madda_rs.tune.RANK_VOTE: tune's vote until EnsV replaced it
SOURCE_SLACK = 0.02  # the source-accuracy filter keeps candidates within this of the best source accuracy


def _rank_vote(names: Sequence[str]) -> Callable[[List[Final]], int]:
    def pick(finals: List[Final]) -> int:
        from ..tune import vote_ranks

        return int(np.argsort(vote_ranks(finals, names), kind="stable")[0])
    return pick


def _filtered(vote: Callable[[List[Final]], int]) -> Callable[[List[Final]], int]:
    """Drop the candidates whose source test accuracy fell more than SOURCE_SLACK below the best
    candidate's (adaptation that broke the source classes), then vote among the rest."""
    def pick(finals: List[Final]) -> int:
        best = max(f.get("source_test_accuracy", -np.inf) for f in finals)
        keep = [i for i, f in enumerate(finals) if f.get("source_test_accuracy", -np.inf) >= best - SOURCE_SLACK]
        return keep[vote([finals[i] for i in keep])]
    return pick


def _mixval(finals: List[Final]) -> int:
    """MixVal (Hu et al. 2023): the candidate whose predictions mixed target images keep most
    (``mixval``, filled in by :func:`with_mixval` from the stored scores)."""
    return int(np.argmax([f.get("mixval", -np.inf) for f in finals]))


def _ensv(finals: List[Final]) -> int:
    """EnsV (Hu et al. 2024): the candidate whose predictions agree most with the candidates'
    majority vote (``ensv``, filled in by :func:`with_ensemble_agreement`)."""
    return int(np.argmax([f.get("ensv", -np.inf) for f in finals]))


def candidate_votes(ensv: bool = False, mixval: bool = False) -> Dict[str, Callable[[List[Final]], int]]:
    """Every vote rated: tune's, its source-filtered form, each selection score alone, and EnsV
    and MixVal where every task's runs have their predictions and MixVal scores."""
    votes = {"IM + BNM + ClassAMI (tune's vote before EnsV)": _rank_vote(TUNE_VOTE),
             "source filter, then IM + BNM + ClassAMI": _filtered(_rank_vote(TUNE_VOTE)),
             "source filter, then ClassAMI": _filtered(_rank_vote(("class_ami",)))}
    votes.update({name: _rank_vote((name,)) for name in SELECTION_SCORES})
    if ensv:
        votes["EnsV (agreement with the candidates' majority)"] = _ensv
        votes["source filter, then EnsV"] = _filtered(_ensv)
    if mixval:
        votes["MixVal (Hu et al. 2023)"] = _mixval
    return votes


MIXVAL_KEY = "{run}:mixval"  # a run's MixVal score in the store, beside its predictions


def collect_predictions(run_dirs: Sequence[str], store: Path) -> Dict[str, np.ndarray]:
    """{run name: its target training predictions, and MIXVAL_KEY: its MixVal score}, kept in
    `store` (an .npz committed beside the table: run folders keep only config.json and
    metrics.json), computed for runs not in it whose model files are at hand
    (madda_rs.scores.evaluate: target_predictions, what each final evaluation scored, and
    target_mixval)."""
    from ..scores.evaluate import target_mixval, target_predictions

    known: Dict[str, np.ndarray] = {}
    if store.is_file():
        with np.load(store) as f:
            known = {k: f[k] for k in f.files}
    added = False
    for d in run_dirs:
        name = Path(d).name
        if not (Path(d) / "target.pt").is_file():
            continue
        if name not in known:
            known[name] = target_predictions(d).astype(np.int16)
            added = True
        if MIXVAL_KEY.format(run=name) not in known:
            known[MIXVAL_KEY.format(run=name)] = np.float64(target_mixval(d))
            added = True
    if added:
        np.savez_compressed(store, **known)
    return known


def with_ensemble_agreement(tasks: Dict[str, List[Tuple[str, Final]]],
                            predictions: Dict[str, np.ndarray]) -> bool:
    """Fill in each run's ``ensv`` where every run of its task has predictions; True when every task has."""
    complete = True
    for runs in tasks.values():
        if not all(name in predictions for name, _ in runs):
            complete = False
            continue
        for (_, final), agree in zip(runs, ensemble_agreement([predictions[name] for name, _ in runs])):
            final["ensv"] = float(agree)
    return complete


def with_mixval(tasks: Dict[str, List[Tuple[str, Final]]], store: Dict[str, np.ndarray]) -> bool:
    """Fill in each run's ``mixval`` from `store` (:data:`MIXVAL_KEY`); True when every run has one."""
    complete = True
    for runs in tasks.values():
        for name, final in runs:
            key = MIXVAL_KEY.format(run=name)
            if key in store:
                final["mixval"] = float(store[key])
            else:
                complete = False
    return complete


def finals_by_task(run_dirs: Sequence[str]) -> Dict[str, List[Tuple[str, Final]]]:
    """{task (source -> target, seed): [(run, its final figures)]} over runs scored on a target test set."""
    tasks: Dict[str, List[Tuple[str, Final]]] = defaultdict(list)
    for d in run_dirs:
        config, metrics = load_run(d)
        target = metrics.get("history", {}).get("target") or []
        scored = [h for h in target if "target_accuracy" in h]
        if scored:
            tasks[f"{config['src']} → {config['tgt']}, seed {config['seed']}"].append((Path(d).name, scored[-1]))
    return dict(tasks)


def regrets(tasks: Dict[str, List[Tuple[str, Final]]], ensv: bool = False,
            mixval: bool = False) -> Dict[str, Dict[str, float]]:
    """{vote: {task: best accuracy - the picked run's accuracy}}."""
    out: Dict[str, Dict[str, float]] = {}
    for name, vote in candidate_votes(ensv, mixval).items():
        out[name] = {}
        for task, runs in tasks.items():
            finals = [f for _, f in runs]
            accuracy = [f["target_accuracy"] for f in finals]
            out[name][task] = max(accuracy) - accuracy[vote(finals)]
    return out


def leave_one_task_out(table: Dict[str, Dict[str, float]]) -> Dict[str, Tuple[str, float]]:
    """{held-out task: (the vote with the lowest mean regret on the other tasks, its mean regret on
    the task left out)}. A task is a source -> target pair: its seeds are left out together, so no
    seed of it helps choose the vote it is scored with."""
    keys = sorted(next(iter(table.values())))
    groups: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        groups[key.split(", seed")[0]].append(key)
    out = {}
    for task, held in sorted(groups.items()):
        others = [k for k in keys if k not in held]
        chosen = min(table, key=lambda v: (np.mean([table[v][k] for k in others]) if others else 0.0, v))
        out[task] = (chosen, float(np.mean([table[chosen][k] for k in held])))
    return out


def votes_markdown(run_dirs: Sequence[str], predictions: Optional[Dict[str, np.ndarray]] = None) -> str:
    """The votes' regret table and leave-one-task-out choice; EnsV and MixVal among the votes
    when `predictions` (:func:`collect_predictions`) covers every run."""
    tasks = finals_by_task(run_dirs)
    if len(tasks) < 2:
        return "fewer than two development tasks with scored runs: nothing to rate the votes on"
    table = regrets(tasks, ensv=with_ensemble_agreement(tasks, predictions or {}),
                    mixval=with_mixval(tasks, predictions or {}))
    names = sorted(tasks)
    sizes = sorted({len(runs) for runs in tasks.values()})
    lines = [f"{len(tasks)} development tasks, {'/'.join(map(str, sizes))} candidate runs each; the target "
             "labels of these tasks (never MNIST's or USPS's) rate each vote's pick, after it is made.", "",
             "| vote | mean regret | worst regret | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for vote in sorted(table, key=lambda v: (np.mean(list(table[v].values())), v)):
        row = table[vote]
        lines.append(f"| {vote} | {np.mean(list(row.values())):.3f} | {max(row.values()):.3f} | "
                     + " | ".join(f"{row[t]:.3f}" for t in names) + " |")
    loto = leave_one_task_out(table)
    lines += ["", "Leave one task out (all its seeds): the vote with the lowest mean regret on the other tasks, "
              "and its mean regret on the task left out.", "",
              "| task left out | vote chosen on the others | its regret there |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {r:.3f} |" for t, (v, r) in sorted(loto.items())]
    held = [r for _, r in loto.values()]
    lines += ["", f"Leave-one-task-out regret: mean {np.mean(held):.3f}, worst {max(held):.3f}."]
    return "\n".join(lines) + "\n"


def devtasks_votes(table: str, runs: Sequence["PlannedRun"], out: Path,
                   devtasks: Sequence["PlannedRun"] = ()) -> str:
    """The votes rated on `table`'s finished candidate runs under `out` (EnsV reads every
    candidate's predictions: kept in one .npz beside the table). For ``devtasks-stage2``, also on
    the same candidates in `devtasks` (the plan of ``devtasks``), each trained with its own stage 1:
    what sharing the source model changes."""
    done = _finished(runs, out)
    text = votes_markdown(done, collect_predictions(done, out / f"{table}-predictions.npz"))
    if table != "devtasks-stage2":
        return text
    from .reproduce import TABLES

    labels = {row.label for row in TABLES[table].rows if row.source_row is not None}
    own = _finished([r for r in devtasks if any(row in labels for row, _ in r.cells)], out)
    return (text + "\n## The same candidates, each with its own stage 1 (devtasks)\n\n"
            + votes_markdown(own, collect_predictions(own, out / "devtasks-predictions.npz")))


def _finished(runs: Sequence["PlannedRun"], out: Path) -> List[str]:
    return [str(out / "runs" / r.slug) for r in runs if (out / "runs" / r.slug / "metrics.json").is_file()]


__all__ = ["devtasks_votes", "candidate_votes", "finals_by_task", "regrets", "leave_one_task_out", "votes_markdown",
           "ensemble_agreement", "collect_predictions", "with_ensemble_agreement", "with_mixval", "MIXVAL_KEY"]
