"""Direct tests of behaviours that once could break with the rest of the suite still passing: each
test names the bug it catches. They go through the public entry points (the CLI, train, load_run,
export_run, read_folder, the shipped predict module) wherever one exists."""

import importlib.util
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import scipy.special
import torch
from PIL import Image

import madda_rs
import madda_rs.data.folders as folders
import madda_rs.inference.standalone as standalone
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.inference.export import export_run
from madda_rs.methods.madda import MaddaTargetStage
from madda_rs.run.folder import RUN_ONLY, load_model
from madda_rs.scores.evaluate import evaluate_run
from madda_rs.scores.predictors import ClassifierPredictor
from madda_rs.training import train

from digits import bars, make_data_dir


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return str(make_data_dir(tmp_path_factory.mktemp("digits"), n_train=300, n_test=150))


def _train(data_dir, out, *flags):
    assert main(["train", "--src", "mnist", "--tgt", "usps", "--data-dir", data_dir, "--no-download", "--device",
                 "cpu", "--threads", "1", "--epochs-source", "1", "--epochs-target", "1", "--out", str(out),
                 "--quiet", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def teacher_run(small_data, tmp_path_factory):
    """M-ADDA with a mean teacher and cluster labels; records whether cluster_labels left its centres alone."""
    centres_kept = []
    real = MaddaTargetStage.cluster_labels  # the one private name here: the clustering step has no public face

    def checked(stage, centers):
        before = centers.copy()
        out = real(stage, centers)
        centres_kept.append(np.array_equal(before, centers))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MaddaTargetStage, "cluster_labels", checked)
        run = _train(small_data, tmp_path_factory.mktemp("runs") / "teacher", "--ema-decay", "0.9",
                     "--magnet-labels", "clusters")
    return run, centres_kept


@pytest.fixture(scope="module")
def adda_run(small_data, tmp_path_factory):
    return _train(small_data, tmp_path_factory.mktemp("runs") / "adda", "--method", "adda")


def test_vote_share_is_the_share_of_the_voted_label_not_of_the_nearest_neighbours():
    """Bug: vote_share counted against the nearest neighbour's label (k=2 runs never tell them apart)."""
    source = np.array([[0, 0], [1, 0], [0, 1]], np.float32)  # one 'near' point, two 'far' ones
    vote = standalone.NeighbourVote(source, np.array([0, 1, 1]), ["near", "far"], k=3, threads=1)
    out = vote(np.array([[0.1, 0.1]], np.float32))  # nearest is 'near', the vote of 3 is 'far'
    assert out["label"].tolist() == ["far"]
    assert out["vote_share"].tolist() == pytest.approx([2 / 3])


def test_about_one_percent_of_the_source_itself_is_unfamiliar():
    """Bug: the unfamiliar threshold at the wrong quantile (0.5 flags half of everything)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    emb = (rng.normal(size=(1000, 4)) + 10 * labels[:, None]).astype(np.float32)
    out = standalone.NeighbourVote(emb, labels, ["a", "b"], k=5, threads=1)(emb)
    assert np.array_equal(out["label_index"], labels)
    assert out["unfamiliar"].mean() == pytest.approx(0.01, abs=0.005)  # UNFAMILIAR_QUANTILE = 0.99


def _softmax_max(logits):
    return scipy.special.softmax(logits.astype(np.float64), axis=1).max(1)


def test_an_exported_adda_run_predicts_by_its_classifier(adda_run, tmp_path):
    """Bug: an exported ADDA run voting kNN over logits instead of taking its classifier's argmax."""
    shipped = tmp_path / "shipped"
    export_run(adda_run, shipped)
    images = bars(40, 28, seed=5)[0]
    np.savez(tmp_path / "images.npz", images=images)
    spec = importlib.util.spec_from_file_location("shipped_predict", shipped / "predict.py")
    shipped_predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped_predict)
    assert shipped_predict.main([str(tmp_path / "images.npz"), "--out", str(tmp_path / "out.npz"), "--threads",
                                 "1"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet what predict.py loads
        encoder = torch.jit.load(str(shipped / "encoder.pt")).eval()
    logits = shipped_predict.embed_batches(encoder, images)
    names = json.loads((shipped / "run.json").read_text())["class_names"]
    with np.load(tmp_path / "out.npz") as got:
        assert got["label"].tolist() == [names[i] for i in logits.argmax(1)]
        assert np.allclose(got["vote_share"], _softmax_max(logits), rtol=1e-5)
        assert got["label"].tolist() == madda_rs.load_run(adda_run, threads=1).predict(images)["label"].tolist()
    assert json.loads((shipped / "run.json").read_text())["predictor"] == "classifier"


def _save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)  # (H, W) grey or (H, W, 3) colour; the format by the suffix


def test_a_truncated_image_is_refused_by_name(tmp_path, monkeypatch):
    """Bug: a PNG with a good header and cut data decoded as a (partly) blank image."""
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    _save(tmp_path / "imgs" / "good.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    _save(tmp_path / "imgs" / "cut.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    data = (tmp_path / "imgs" / "cut.png").read_bytes()
    (tmp_path / "imgs" / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(folders.FolderError, match="cut.png: cannot"):
        folders.read_folder(tmp_path / "imgs", folders.Geometry(1, 28, 28), labelled=False, threads=1)
    with pytest.raises(ValueError, match="cut.png: cannot"):  # predict's reader too
        standalone.load_inputs([str(tmp_path / "imgs" / "cut.png")], (1, 28, 28), threads=1)


def test_the_folder_cache_notices_an_edited_image(tmp_path, monkeypatch):
    """Bug: the folder cache keyed without modification times (an edit of the same size not re-read)."""
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "imgs" / "x.bmp"  # BMP: the edited file has exactly the old size
    _save(path, np.full((8, 8), 10, np.uint8))
    geometry = folders.Geometry(1, 8, 8)
    assert np.unique(folders.read_folder(path.parent, geometry, labelled=False, threads=1).images).tolist() == [10]
    size, stat = path.stat().st_size, path.stat()
    _save(path, np.full((8, 8), 200, np.uint8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert path.stat().st_size == size
    assert np.unique(folders.read_folder(path.parent, geometry, labelled=False, threads=1).images).tolist() == [200]


def test_a_test_folder_lacking_a_class_is_labelled_in_the_sources_classes(tmp_path, monkeypatch):
    """Bug: a test folder's labels indexing its own subfolders, not the source's classes."""
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    for name in ("a", "c"):
        for i in range(2):
            _save(tmp_path / "test" / name / f"{i}.png", np.zeros((8, 8), np.uint8))
    got = folders.read_folder(tmp_path / "test", folders.Geometry(1, 8, 8), labelled=True, classes=("a", "b", "c"),
                              threads=1)
    assert got.classes == ("a", "b", "c")
    assert got.labels.tolist() == [0, 0, 2, 2]


def test_colour_becomes_grey_by_luminance(tmp_path, monkeypatch):
    """Bug: colour converted to grey by keeping the first (red) channel."""
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    pixels = np.zeros((4, 6, 3), np.uint8)
    for column, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (40, 120, 200)]):
        pixels[:, column] = colour
    path = tmp_path / "imgs" / "colour.png"
    _save(path, pixels)
    grey = folders.read_folder(path.parent, folders.Geometry(1, 4, 6), labelled=False, threads=1).images[0, 0]
    assert grey.tolist() == np.asarray(Image.open(path).convert("L")).tolist()
    assert grey[0, 0] != grey[0, 2]  # pure red and pure blue differ in luminance


def test_eval_rescores_the_saved_teacher_not_the_student(teacher_run):
    """Bug: `eval` re-scoring the student model instead of target.pt (the mean teacher)."""
    run = teacher_run[0]
    final = json.loads((run / "metrics.json").read_text())["history"]["target"][-1]
    rescored = evaluate_run(str(run), device="cpu")
    # the continuous figures tell two models apart where an accuracy on 150 images might not
    for key in ("target_accuracy", "snd", "entropy", "im", "bnm"):
        assert rescored[key] == pytest.approx(final[key], rel=1e-5), key


def test_clustering_leaves_the_source_centres_alone(teacher_run):
    """Bug: cluster_labels refining the cached source class means in place."""
    centres_kept = teacher_run[1]
    assert centres_kept == [True]  # one target epoch, one clustering


def test_the_mean_teacher_moves_during_training(teacher_run):
    """Bug: the teacher never updated where the target model steps (it stays the source model)."""
    run = teacher_run[0]
    teacher = load_model(run / "target.pt").state_dict()
    initial = load_model(run / "source.pt").state_dict()  # the target model starts as the source model
    student = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["stages"]["target"]["target"]
    assert any(not torch.equal(teacher[k], initial[k]) for k in teacher)
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)


def test_softmax_probabilities_are_taken_over_classes():
    """Bug: ADDA's softmax over the wrong axis (the predictor's probabilities, the shipped vote_share)."""
    logits = np.random.default_rng(0).normal(scale=3, size=(5, 3)).astype(np.float32)
    p = object.__new__(ClassifierPredictor).probabilities(logits)  # it reads nothing of the predictor
    assert np.allclose(p, scipy.special.softmax(logits.astype(np.float64), axis=1)) and np.allclose(p.sum(1), 1)
    vote = standalone.NeighbourVote(logits, np.array([0, 1, 2, 0, 1]), ["x", "y", "z"], k=1, kind="classifier",
                                    threads=1)
    out = vote(logits)
    assert np.array_equal(out["label_index"], logits.argmax(1))
    assert np.allclose(out["vote_share"], _softmax_max(logits))


def test_resume_refuses_a_different_epochs_target(teacher_run, tmp_path, capsys):
    """Bug: epochs_target accepted as run-only, so --resume silently changes the schedule."""
    run = shutil.copytree(teacher_run[0], tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(run), "--epochs-target", "3", "--quiet"])
    assert exc.value.code == 2 and "epochs-target" in capsys.readouterr().err
    config = TrainConfig.load(str(run / "config.json")).replace(epochs_target=3)
    with pytest.raises(ValueError, match="epochs_target"):
        train(config, out_dir=str(run), resume=True)
    assert "epochs_target" not in RUN_ONLY
