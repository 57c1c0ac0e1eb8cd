"""Choosing a checkpoint without target test labels: the label-free scores against hand-computed
values, the held-out target training images, `--select`, and the report that rates the scores."""

import json

import numpy as np
import pytest
import torch

from madda_rs.cli import main
from madda_rs.config import SELECTION_SCORES, TrainConfig
from madda_rs.experiments.report import last_evaluations_mean, pick, selection_table
from madda_rs.scores.label_free import label_free_figures, nearest_center_labels, soft_neighbourhood_density
from madda_rs.training import resume, train


def _config(data_dir, **kw):
    base = dict(src="mnist", tgt="usps", epochs_source=1, epochs_target=3, data_dir=data_dir, download=False,
                device="cpu", eval_every=1, batch_size=32, target_batch_size=32)
    base.update(kw)
    return TrainConfig(**base)


def _snd_by_hand(x, temperature=0.05):
    n = len(x)
    total = 0.0
    for i in range(n):
        sims = [float(np.dot(x[i], x[j]) / np.linalg.norm(x[i]) / np.linalg.norm(x[j])) / temperature
                for j in range(n) if j != i]
        w = np.exp(np.array(sims) - max(sims))
        p = w / w.sum()
        total += -sum(q * np.log(q) for q in p if q > 0)
    return total / n


def test_snd_matches_its_definition_and_rewards_tight_clusters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    assert soft_neighbourhood_density(x) == pytest.approx(_snd_by_hand(x), rel=1e-6)
    # two tight clusters: each image's softmax spreads over its cluster (high entropy) ...
    tight = np.repeat(np.eye(2, 4, dtype=np.float32), 6, axis=0) + rng.normal(0, 1e-3, (12, 4)).astype(np.float32)
    # ... scattered directions: each image has one clear nearest neighbour (low entropy)
    assert soft_neighbourhood_density(tight) > soft_neighbourhood_density(x)
    assert soft_neighbourhood_density(x[:1]) == 0.0


def test_nearest_center_labels_and_prediction_figures():
    ref = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)  # class 3 around (0, 1), class 7 around (10, 1)
    labels = np.array([3, 3, 7, 7])
    got = nearest_center_labels(np.array([[1, 1], [9, 5], [4.9, 0]], np.float32), ref, labels)
    assert got.tolist() == [3, 7, 3]
    figures = label_free_figures(np.array([1, 1, 1, 2]), n_classes=4)
    p = np.array([0.75, 0.25])
    assert figures == {"pred_classes": 2, "pred_largest_class_share": 0.75,
                       "pred_entropy": pytest.approx(float(-(p * np.log(p)).sum() / np.log(4)))}


def test_held_out_images_are_the_training_images_the_subset_left_out(adda_sized_dir):
    from madda_rs.data.domains import HOLDOUT_IMAGES
    from madda_rs.data.run_data import prepare_data

    data = prepare_data(_config(adda_sized_dir))
    assert len(data.tgt_train) == 1800 and 200 < len(data.tgt_holdout) < min(HOLDOUT_IMAGES, 2100 - 1800)
    assert data.tgt_holdout.labels is not None and data.tgt_train.labels is None
    train = {bytes(x.numpy()) for x in data.tgt_train.images}
    assert not any(bytes(x.numpy()) in train for x in data.tgt_holdout.images)  # disjoint
    again = prepare_data(_config(adda_sized_dir))
    assert torch.equal(again.tgt_holdout.images, data.tgt_holdout.images)  # seeded
    assert prepare_data(_config(adda_sized_dir, protocol="full")).tgt_holdout is None


def test_a_standard_split_holdout_holds_no_digit_the_pooled_split_tests_on(adda_sized_dir):
    from madda_rs.data.domains import REGISTRY
    from madda_rs.data.run_data import prepare_data

    data = prepare_data(_config(adda_sized_dir))
    pooled_test = REGISTRY["usps"].load(False, _config(adda_sized_dir, usps_split="pooled"))
    tested = {bytes(x.numpy()) for x in pooled_test.images}
    held = [bytes(x.numpy()) for x in data.tgt_holdout.images]
    assert len(held) > 100 and not any(h in tested for h in held)
    # the images left out of the subset did hold some: the exclusion is what keeps them out
    full = REGISTRY["usps"].load(True, _config(adda_sized_dir))
    train = {bytes(x.numpy()) for x in data.tgt_train.images}
    assert sum(bytes(x.numpy()) in tested for x in full.images if bytes(x.numpy()) not in train) > 20


@pytest.fixture(scope="module")
def adda_sized_dir(tmp_path_factory):
    from digits import make_data_dir

    return str(make_data_dir(tmp_path_factory.mktemp("adda"), n_train=2100, n_test=50, n_train_usps=2100))


def test_every_evaluation_records_the_selection_scores(generated_data_dir):
    result = train(_config(generated_data_dir))
    scored = [h for h in result.history["target"] if "pred_classes" in h]
    assert len(scored) == 3
    for h in scored:
        missing = set(SELECTION_SCORES) - set(h)
        assert not missing, missing


def test_holdout_accuracy_is_a_labelled_tuning_figure_never_a_label_free_one(adda_sized_dir, tmp_path):
    """It reads labelled target training images: recorded and rated under its own name, never
    offered by --select nor counted among a run's label-free figures."""
    assert "holdout_accuracy" not in SELECTION_SCORES
    with pytest.raises(ValueError, match="select must be one of"):
        TrainConfig(select="holdout_accuracy")
    result = train(_config(adda_sized_dir, epochs_target=1))
    assert "holdout_accuracy" in result.history["target"][-1] and "holdout_accuracy" not in result.label_free
    metrics = _metrics([0.5, 0.9, 0.7], snd=[1, 2, 3], d_acc=[0.9, 0.6, 0.5])
    for h, held in zip(metrics["history"]["target"], (0.4, 0.8, 0.6)):
        h["holdout_accuracy"] = held
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(metrics))
    rows = [line for line in selection_table([str(tmp_path / "a")]).splitlines() if line.startswith("| holdout")]
    assert len(rows) == 3 and all("labelled: up to 2,000 target training images" in r for r in rows)  # all three tables


def test_select_keeps_the_model_the_score_picks_and_survives_resume(generated_data_dir, tmp_path, monkeypatch):
    import madda_rs.training as training

    real = training.target_scores
    snd = iter([0.0, 5.0, 9.0, 1.0])  # source-only, then target epochs 1-3: epoch 2 is the pick

    def fake(reference, model, data, seed):
        out = real(reference, model, data, seed)
        out["snd"] = next(snd)
        return out

    monkeypatch.setattr(training, "target_scores", fake)
    result = train(_config(generated_data_dir, select="snd", checkpoint_every=1), str(tmp_path))
    assert result.selected["epoch"] == 2 and result.selected["value"] == 9.0
    assert result.selected["target_accuracy"] == result.history["target"][1]["target_accuracy"]
    saved = torch.load(tmp_path / "selected.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and saved["score"] == "snd"  # epochs trained, as in target.pt
    from madda_rs.run.folder import load_model

    assert isinstance(load_model(tmp_path / "selected.pt"), torch.nn.Module)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["selected"] == result.selected and metrics["target_accuracy"] == result.target_accuracy

    # cut the run back to after epoch 2, then resume: the pick comes back from selected.pt and history
    ckpt = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    ckpt["history"]["target"] = ckpt["history"]["target"][:2]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    (tmp_path / "metrics.json").unlink()
    snd = iter([0.0, 2.0])  # the source-only score, then the re-run epoch 3: below the kept pick
    assert resume(str(tmp_path)).selected["epoch"] == 2


def _metrics(accs, snd, d_acc):
    hist = [{"epoch": i, "pred_classes": 10, "target_accuracy": a, "snd": s, "d_acc": d}
            for i, (a, s, d) in enumerate(zip(accs, snd, d_acc))]
    return {"history": {"source": [], "target": hist}, "target_accuracy": accs[-1]}


def test_report_rates_each_score_and_its_pick(tmp_path):
    runs = {
        "a": _metrics([0.5, 0.8, 0.9, 0.7], snd=[1, 2, 3, 1.5], d_acc=[0.9, 0.6, 0.5, 0.7]),
        "b": _metrics([0.6, 0.7, 0.95, 0.85], snd=[1, 2, 4, 3], d_acc=[0.8, 0.7, 0.6, 0.65]),
    }
    tasks = {"a": {"src": "mnist", "tgt": "usps"}, "b": {"src": "usps", "tgt": "mnist", "usps_split": "pooled"}}
    for name, metrics in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(tasks[name]))
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    assert pick(runs["a"]["history"]["target"], "d_acc")["epoch"] == 2  # lower is better
    assert last_evaluations_mean(runs["a"], n=2) == pytest.approx(0.8)
    overall, by_task = selection_table([str(tmp_path / "a"), str(tmp_path / "b")]).split("task by task")
    by_task = by_task.split("as `madda-rs tune` chooses")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:8]]
            for line in overall.splitlines() if line.startswith("| ") and "picked by" not in line}
    # snd ranks the evaluations exactly as accuracy does in both runs: rho = 1, and it picks the best
    runs_, pooled, within, picked, final, oracle = rows["snd (max)"]
    assert (runs_, within) == ("2", "+1.00") and float(picked) == pytest.approx(0.925)
    assert float(final) == pytest.approx(0.775) and float(oracle) == pytest.approx(0.925)
    assert float(rows["d_acc (min)"][3]) == pytest.approx(0.925)
    # task by task: MNIST → USPS (standard) holds run a alone, USPS → MNIST (pooled) run b
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
             for line in by_task.splitlines() if line.startswith("| ")}
    assert cells["picked by"] == ["MNIST → USPS (standard)", "USPS → MNIST (pooled)"]
    assert cells["snd (max)"] == ["0.9000", "0.9500"] and cells["final epoch"] == ["0.7000", "0.8500"]


def test_select_names_a_known_score(generated_data_dir):
    with pytest.raises(ValueError, match="select must be one of"):
        _config(generated_data_dir, select="accuracy")
    with pytest.raises(SystemExit):
        main(["train", "--select", "target_accuracy"])


def test_report_says_which_run_each_score_would_choose_within_a_task(tmp_path):
    """As madda-rs tune chooses: among one task's runs, by their final evaluations."""
    runs = {"a": (_metrics([0.5, 0.9], snd=[1, 2], d_acc=[0.9, 0.4]), "mnist"),
            "b": (_metrics([0.6, 0.7], snd=[1, 8], d_acc=[0.9, 0.6]), "mnist"),  # snd's choice, the worse run
            "c": (_metrics([0.8], snd=[1], d_acc=[0.5]), "usps")}  # alone in its task: nothing to choose
    for name, (metrics, src) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"src": src, "tgt": "usps" if src == "mnist" else
                                                                 "mnist"}))
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    across = selection_table([str(tmp_path / n) for n in runs]).split("as `madda-rs tune` chooses")[1]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
             for line in across.splitlines() if line.startswith("| ")}
    assert cells["snd (max)"] == ["0.7000", "-", "0.7000"] and cells["d_acc (min)"] == ["0.9000", "-", "0.9000"]
    assert cells["the mean run"] == ["0.8000", "-", "0.8000"] and cells["the best run (oracle)"][0] == "0.9000"
