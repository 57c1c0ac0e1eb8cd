"""Rating label-free votes on development tasks: each vote picks from label-free figures alone;
the targets' labels only measure its regret, and the vote kept is chosen leaving each task out."""

import json

import pytest

from madda_rs.experiments.votes import candidate_votes, finals_by_task, leave_one_task_out, regrets, votes_markdown


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
