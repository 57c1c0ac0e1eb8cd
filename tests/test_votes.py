"""Rating label-free votes on development tasks: each vote picks from label-free figures alone;
the targets' labels only measure its regret, and the vote kept is chosen leaving each task out."""

import json

import numpy as np
import pytest

from madda_rs.experiments.votes import (
    MIXVAL_KEY,
    candidate_votes,
    collect_predictions,
    ensemble_agreement,
    finals_by_task,
    leave_one_task_out,
    regrets,
    votes_markdown,
)


def _run(root, name, task, seed, acc, **scores):
    d = root / name
    d.mkdir()
    src, tgt = task.split(">")
    (d / "config.json").write_text(json.dumps({"src": src, "tgt": tgt, "seed": seed}))
    final = {"epoch": 14, "target_accuracy": acc, **scores}
    (d / "metrics.json").write_text(json.dumps({"history": {"source": [], "target": [final]}}))
    return str(d)


@pytest.fixture
def dev_runs(tmp_path):
    """Three tasks, two candidates each. IM favours the better run on tasks a and b, the worse on c."""
    runs = []
    for task, (good_im, bad_im) in (("a>x", (2.0, 1.0)), ("b>y", (2.0, 1.0)), ("c>z", (1.0, 2.0))):
        t = task[0]
        runs.append(_run(tmp_path, f"{t}-good", task, 0, 0.9, im=good_im, bnm=0.5, class_ami=0.5))
        runs.append(_run(tmp_path, f"{t}-bad", task, 0, 0.6, im=bad_im, bnm=0.5, class_ami=0.5))
    return runs


def test_regret_is_the_best_accuracy_minus_the_picked_runs(dev_runs):
    table = regrets(finals_by_task(dev_runs))
    im = table["im"]
    assert im == pytest.approx({"a → x, seed 0": 0.0, "b → y, seed 0": 0.0, "c → z, seed 0": 0.3})
    loto = leave_one_task_out(table)
    assert set(loto) == {"a → x", "b → y", "c → z"} and all(r >= 0 for _, r in loto.values())
    # chosen on a and b, where IM is perfect (ties broken by name), IM then scores c's regret
    assert loto["c → z"] == (min(v for v in table if table[v]["a → x, seed 0"] + table[v]["b → y, seed 0"] == 0),
                             pytest.approx(table[loto["c → z"][0]]["c → z, seed 0"]))
    assert "| im |" in votes_markdown(dev_runs)


def test_no_vote_reads_the_target_accuracy(dev_runs, tmp_path):
    """Swapping every task's accuracies leaves every vote's pick where it was."""
    tasks = finals_by_task(dev_runs)
    swapped = {t: [(n, {**f, "target_accuracy": runs[1 - i][1]["target_accuracy"]}) for i, (n, f) in enumerate(runs)]
               for t, runs in tasks.items()}
    for name, vote in candidate_votes().items():
        for t in tasks:
            assert vote([f for _, f in tasks[t]]) == vote([f for _, f in swapped[t]]), name


def test_leaving_a_task_out_leaves_out_all_its_seeds(tmp_path):
    """A vote that is perfect on a task's seed 0 must not be chosen for that task's seed 1 on that
    evidence: the held-out task's seeds never help choose."""
    runs = []
    for seed, (good_im, bad_im) in ((0, (2.0, 1.0)), (1, (1.0, 2.0))):
        runs.append(_run(tmp_path, f"a{seed}-good", "a>x", seed, 0.9, im=good_im, bnm=1.0, class_ami=1.0))
        runs.append(_run(tmp_path, f"a{seed}-bad", "a>x", seed, 0.6, im=bad_im, bnm=1.0, class_ami=1.0))
    runs.append(_run(tmp_path, "b-good", "b>y", 0, 0.9, im=1.0, bnm=1.0, class_ami=1.0))
    runs.append(_run(tmp_path, "b-bad", "b>y", 0, 0.6, im=2.0, bnm=1.0, class_ami=1.0))
    loto = leave_one_task_out(regrets(finals_by_task(runs)))
    assert set(loto) == {"a → x", "b → y"}
    assert loto["a → x"][0] != "im"  # chosen on b alone, where IM picks the worse run


def test_ensv_picks_the_candidate_closest_to_the_candidates_majority(dev_runs, tmp_path):
    # per image, the majority of three candidates; candidate 1 always agrees with it, candidate 0 on
    # two of four images, and a tie (image 3: labels 2, 2, 5 -> 2) goes to the most frequent label
    preds = [np.array([0, 1, 9, 5]), np.array([0, 1, 2, 2]), np.array([0, 3, 2, 2])]
    assert ensemble_agreement(preds).tolist() == [0.5, 1.0, 0.75]
    assert ensemble_agreement([np.array([4, 7]), np.array([7, 4])]).tolist() == [0.5, 0.5]  # ties: smallest label
    # every task's "bad" run agrees with the majority (three candidates: two like it); EnsV then
    # picks it, whatever the accuracies say; without predictions for every run there is no EnsV row
    for t in "abc":
        d = tmp_path / f"{t}-third"
        d.mkdir()
        (d / "config.json").write_text((tmp_path / f"{t}-bad" / "config.json").read_text())
        (d / "metrics.json").write_text((tmp_path / f"{t}-bad" / "metrics.json").read_text())
    runs = dev_runs + [str(tmp_path / f"{t}-third") for t in "abc"]
    predictions = {f"{t}-{kind}": np.array(labels) for t in "abc"
                   for kind, labels in (("good", [1, 1, 1]), ("bad", [0, 0, 1]), ("third", [0, 0, 0]))}
    store = tmp_path / "predictions.npz"
    assert collect_predictions(runs, store) == {} and not store.exists()  # no model files: nothing to compute
    np.savez(store, **predictions)
    assert {k: v.tolist() for k, v in collect_predictions(runs, store).items()} == \
        {k: v.tolist() for k, v in predictions.items()}
    markdown = votes_markdown(runs, predictions)
    ensv = next(line for line in markdown.splitlines() if line.startswith("| EnsV"))
    assert ensv.split(" | ")[1] == "0.300"  # the bad runs (0.6) picked on all three tasks, whose best is 0.9
    assert "| EnsV" not in votes_markdown(runs, {k: v for k, v in predictions.items() if not k.startswith("a-")})


def test_mixval_picks_the_candidate_with_the_highest_stored_score(dev_runs):
    # MixVal's scores live in the predictions store beside the predictions (MIXVAL_KEY); it picks
    # the highest, whatever the other figures say; a run without one leaves MixVal out
    store = {f"{t}-{kind}": np.array([0, 1]) for t in "abc" for kind in ("good", "bad")}
    store.update({MIXVAL_KEY.format(run=f"{t}-{kind}"): np.float64(score) for t in "abc"
                  for kind, score in (("good", 0.8), ("bad", 0.7))})
    row = next(line for line in votes_markdown(dev_runs, store).splitlines() if line.startswith("| MixVal"))
    assert row.split(" | ")[1] == "0.000"  # the good run (0.9) picked on every task
    store.update({MIXVAL_KEY.format(run=f"{t}-bad"): np.float64(0.9) for t in "abc"})
    row = next(line for line in votes_markdown(dev_runs, store).splitlines() if line.startswith("| MixVal"))
    assert row.split(" | ")[1] == "0.300"
    del store[MIXVAL_KEY.format(run="a-good")]
    assert "| MixVal" not in votes_markdown(dev_runs, store)
