"""madda-rs tune: successive halving ranked by the label-free vote, and blind to every target label."""

import bz2
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import madda_rs.tune as tune_module
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.methods import get_method
from madda_rs.tune import candidate_config, candidate_settings, vote_ranks

# a space small enough for tests: 2 x 2 x 2 candidates, schedules of a few epochs (1 at the first rung)
SMALL_SPACE = {"schedule": ((3, 3), (6, 3)), "im_weight": (0.0, 1.0), "adversarial": (True, False)}


def test_the_vote_averages_ranks_and_reads_label_free_scores_only():
    scores = [{"im": 1.0, "bnm": 0.5, "class_ami": 0.2}, {"im": 2.0, "bnm": 0.4, "class_ami": 0.9},
              {"im": 0.5, "bnm": 0.9}]  # the last one misses class_ami: last under it
    np.testing.assert_allclose(vote_ranks(scores), [(1 + 1 + 1) / 3, (0 + 2 + 0) / 3, (2 + 0 + 2) / 3])
    assert vote_ranks([{"entropy": 0.1}, {"entropy": 0.5}], vote=("entropy",)).tolist() == [0, 1]  # lower wins
    with pytest.raises(ValueError, match="label-free scores only"):
        vote_ranks(scores, vote=("target_accuracy",))
    with pytest.raises(ValueError, match="label-free scores only"):
        vote_ranks(scores, vote=("holdout_accuracy",))


def test_candidates_start_at_the_presets_point_and_hold_given_settings_fixed():
    base = TrainConfig(preset="improved")
    first = candidate_settings(base, 5, seed=0)
    assert len(first) == 5 and first[0] == {"schedule": (80, 30), "augment": True, "im_weight": 1.0,
                                            "adversarial": True, "magnet_labels": "clusters",
                                            "negatives": "semihard", "ema_decay": 0.99, "k": 10}
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 5  # distinct
    assert candidate_settings(base, 5, seed=0) == first and candidate_settings(base, 5, seed=1) != first
    fixed = candidate_settings(TrainConfig(preset="improved", im_weight=2.0), 1000, seed=0)
    assert all("im_weight" not in c for c in fixed) and len(fixed) == 2 ** 7
    # a base whose own point lies outside the space ('paper': 200 + 200 epochs) draws every candidate
    assert len(candidate_settings(TrainConfig(preset="paper"), 5, seed=0)) == 5
    cut = candidate_config(base, first[0], fraction=1 / 9)
    assert (cut.epochs_source, cut.epochs_target, cut.eval_every) == (9, 3, 3)


def _shuffled_copy(data_dir, root):
    """The same images, every USPS label (training and test) permuted."""
    shutil.copytree(data_dir, root)
    rng = np.random.default_rng(0)
    for name in ("usps.bz2", "usps.t.bz2"):
        lines = bz2.decompress((root / name).read_bytes()).decode().splitlines()
        labels = [line.split(" ", 1)[0] for line in lines]
        rest = [line.split(" ", 1)[1] for line in lines]
        labels = [labels[i] for i in rng.permutation(len(labels))]
        (root / name).write_bytes(bz2.compress("\n".join(f"{a} {b}" for a, b in zip(labels, rest)).encode() + b"\n"))
    return str(root)


def _tune(data_dir, out, *extra):
    return main(["tune", "--src", "mnist", "--tgt", "usps", "--data-dir", data_dir, "--no-download",
                 "--device", "cpu", "--threads", "1", "--batch-size", "32", "--target-batch-size", "32",
                 "--candidates", "4", "--out", str(out), "--quiet", *extra])


def test_tune_chooses_the_same_run_whatever_the_target_labels_say(generated_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(get_method("madda"), "search_space", SMALL_SPACE)
    shuffled = _shuffled_copy(Path(generated_data_dir), tmp_path / "shuffled")
    assert _tune(generated_data_dir, tmp_path / "a") == 0
    assert _tune(shuffled, tmp_path / "b") == 0
    a, b = (json.loads((tmp_path / d / "tune.json").read_text()) for d in "ab")
    rungs = [len(c["rungs"]) for c in a["candidates"]]
    assert sorted(rungs) == [1, 1, 1, 3]  # 4 at a ninth, the best 1 at a third, then the full schedule
    # at a ninth both schedules train 1 source epoch: one stage 1, which the other three adapt
    first = a["candidates"][0]["index"]
    assert [c["rungs"][0]["source_model_of"] for c in a["candidates"]] == [None, first, first, first]
    shared = json.loads((tmp_path / "a" / "candidates" / f"c{a['candidates'][1]['index']:02d}-rung0" /
                         "config.json").read_text())
    assert shared["source_from"] == str(tmp_path / "a" / "candidates" / f"c{first:02d}-rung0")
    strip = ("data_dir",)
    assert {k: v for k, v in a["chosen"].items() if k not in strip} == \
        {k: v for k, v in b["chosen"].items() if k not in strip}
    scores = [[[r["scores"], r["epochs_source"]] for r in c["rungs"]] for c in a["candidates"]]
    assert scores == [[[r["scores"], r["epochs_source"]] for r in c["rungs"]] for c in b["candidates"]]  # alike
    assert a["after_the_choice"] != b["after_the_choice"]  # the labels did change what is scored after
    # the chosen run sits in the folder, its config the chosen one
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert {k: config[k] for k in ("epochs_source", "epochs_target", "im_weight", "adversarial")} == \
        {k: a["chosen"][k] for k in ("epochs_source", "epochs_target", "im_weight", "adversarial")}
    assert (tmp_path / "a" / "target.pt").is_file()
    # ... and it is the finalist's own run, copied, not trained again (a rerun need not repeat it)
    finalist = tmp_path / "a" / "candidates" / f"c{a['chosen_index']:02d}-rung2"
    left, trained = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "a", finalist))
    assert left["wall_seconds"] == trained["wall_seconds"] and left["history"] == trained["history"]


def test_tune_keeps_to_its_budget_and_refuses_to_overwrite(generated_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(get_method("madda"), "search_space", SMALL_SPACE)
    assert _tune(generated_data_dir, tmp_path / "t", "--budget", "0.0001") == 0
    record = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert record["notes"] and sum(len(c["rungs"]) > 0 for c in record["candidates"]) == 1
    assert _tune(generated_data_dir, tmp_path / "t") == 1
    assert "tune.json exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _tune(generated_data_dir, tmp_path / "u", "--budget", "0")


CONSENSUS = np.arange(40) % 10  # the labels every faked candidate predicts where it is right


def _fake_predictions(quality):
    """candidate_predictions() faked from the run's config: a candidate of quality q gets
    round(40 (1 - q / 1.56)) images wrong, each with a label of its own (10 + its index), so its
    errors never form a majority and the best candidate agrees with the majority everywhere."""
    def predictions(run_dir, base, cache):
        config = TrainConfig.load(str(Path(run_dir) / "config.json"))
        wrong = max(0, int(round(len(CONSENSUS) * (1 - quality(config) / 1.56))))
        pred = CONSENSUS.copy()
        pred[:wrong] = 10 + int(Path(run_dir).name[1:3])
        return pred
    return predictions


def test_the_choice_follows_the_vote_and_ignores_whatever_accuracy_the_runs_report(tmp_path, monkeypatch):
    """Runs faked by their settings: EnsV favours im_weight 1 with the adversarial loss on (their
    predictions agree most with the candidates' majority). Target accuracies that agree with the
    vote, then ones that contradict it, leave the choice alone."""
    import types

    import madda_rs.training as training

    monkeypatch.setattr(get_method("madda"), "search_space", SMALL_SPACE)
    monkeypatch.setattr(tune_module, "candidate_predictions", _fake_predictions(
        lambda c: c.im_weight + 0.5 * c.adversarial + 0.01 * c.epochs_source))

    def fake_train(accuracy_sign):
        def train(config, out_dir, overwrite=False):
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "config.json").write_text(json.dumps(config.to_dict()))
            quality = config.im_weight + 0.5 * config.adversarial + 0.01 * config.epochs_source
            acc = 0.5 + accuracy_sign * quality / 10
            # the rank scores point the other way: a rank vote would choose otherwise, EnsV does not read them
            final = {"im": -quality, "bnm": -quality, "class_ami": -quality, "target_accuracy": acc}
            return types.SimpleNamespace(wall_seconds=0.01, history={"target": [final]}, target_accuracy=acc)
        return train

    chosen = []
    for sign, out in ((+1, "agree"), (-1, "contradict")):
        monkeypatch.setattr(training, "train", fake_train(sign))
        record = tune_module.tune(TrainConfig(src="mnist", tgt="usps"), str(tmp_path / out), candidates=8)
        chosen.append(record["candidates"][record["chosen_index"]]["settings"])
        assert record["vote"] == "ensv" and all("ensv" in r for c in record["candidates"] for r in c["rungs"][:-1])
    assert chosen[0] == chosen[1] == {"schedule": (6, 3), "im_weight": 1.0, "adversarial": True}


def _fake_train(quality, accuracy, seconds=0.01):
    """train() faked: the run's label-free scores from quality(config), its accuracy from accuracy(config)."""
    import types

    def train(config, out_dir, overwrite=False):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.json").write_text(json.dumps(config.to_dict()))
        q, acc = quality(config), accuracy(config)
        final = {"im": q, "bnm": q, "class_ami": q, "target_accuracy": acc}
        return types.SimpleNamespace(wall_seconds=seconds, history={"target": [final]}, target_accuracy=acc)
    return train


def test_a_tie_in_the_vote_is_not_broken_by_target_accuracy(tmp_path, monkeypatch):
    """Every candidate scores the same: the vote ties everywhere, so the choice is the search's own
    order, whichever candidate the (never-read) accuracies favour."""
    import madda_rs.training as training

    monkeypatch.setattr(get_method("madda"), "search_space", SMALL_SPACE)
    monkeypatch.setattr(tune_module, "candidate_predictions", lambda run_dir, base, cache: CONSENSUS)
    chosen = []
    for sign, out in ((+1, "up"), (-1, "down")):
        accuracy = (lambda s: lambda c: 0.5 + s * (c.im_weight + 0.5 * c.adversarial) / 10)(sign)
        monkeypatch.setattr(training, "train", _fake_train(lambda c: 1.0, accuracy))
        record = tune_module.tune(TrainConfig(src="mnist", tgt="usps"), str(tmp_path / out), candidates=8)
        chosen.append(record["chosen_index"])
    assert chosen[0] == chosen[1]


def test_the_budget_estimate_is_seconds_per_epoch_not_per_run(tmp_path, monkeypatch):
    """Faked runs of 2 epochs (a ninth of 9 + 9) take 60 s each: 30 s an epoch, so a 100 s budget
    holds every candidate of the first rung (each estimated at 60 s, nothing really spent); a
    whole run's seconds taken per epoch would estimate 120 s and stop after the first."""
    import madda_rs.training as training

    monkeypatch.setattr(get_method("madda"), "search_space", {"schedule": ((9, 9),), "im_weight": (0.0, 1.0, 2.0)})
    monkeypatch.setattr(training, "train", _fake_train(lambda c: c.im_weight, lambda c: 0.5, seconds=60.0))
    monkeypatch.setattr(tune_module, "candidate_predictions", lambda run_dir, base, cache: CONSENSUS)
    record = tune_module.tune(TrainConfig(src="mnist", tgt="usps"), str(tmp_path / "t"), budget_minutes=100 / 60,
                              candidates=3)
    assert [len(c["rungs"]) >= 1 for c in record["candidates"]] == [True, True, True]


def test_candidates_share_a_stage_1_only_where_it_reads_the_same_settings(tmp_path, monkeypatch):
    import madda_rs.training as training

    trained = []

    def train(config, out_dir, overwrite=False):
        trained.append((config.negatives, config.im_weight, config.source_from))
        return _fake_train(lambda c: c.im_weight, lambda c: 0.5)(config, out_dir, overwrite)

    monkeypatch.setattr(get_method("madda"), "search_space",
                        {"schedule": ((9, 9),), "negatives": ("random", "semihard"), "im_weight": (0.0, 1.0)})
    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(tune_module, "candidate_predictions", lambda run_dir, base, cache: CONSENSUS)
    record = tune_module.tune(TrainConfig(src="mnist", tgt="usps"), str(tmp_path / "t"), candidates=4)
    rung0 = {(c["settings"]["negatives"], c["settings"]["im_weight"]): c for c in record["candidates"]}
    assert len(rung0) == 4 and len(trained) >= 4
    for negatives in ("random", "semihard"):
        donor, sharer = (rung0[negatives, 0.0], rung0[negatives, 1.0])
        first, second = sorted((donor, sharer), key=lambda c: record["candidates"].index(c))
        assert first["rungs"][0]["source_model_of"] is None
        assert second["rungs"][0]["source_model_of"] == first["index"]  # same negatives: one stage 1
    assert sum(source is None for _, _, source in trained[:4]) == 2  # two stage-1 settings, two stage 1s
