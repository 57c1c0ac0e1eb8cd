"""Figures of saved runs: every PNG is written where documented and can be read back, the t-SNE
embeds what its contract says, runs are grouped by experiment, and missing inputs are skipped
(or refused) as documented. Runs here are tiny and trained on in-memory 16x16 bars."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import matplotlib.image
import numpy as np
import pytest
import sklearn.manifold
from threadpoolctl import threadpool_limits

import madda_rs.experiments.plots as plots
from madda_rs.config import TrainConfig
from madda_rs.data.domains import REGISTRY, RegisteredDomain
from madda_rs.data.images import as_image_set
from madda_rs.data.run_data import prepare_data
from madda_rs.experiments.plots import confusion_figure, curves_figure, plot_runs, time_figure, tsne_figure
from madda_rs.run.folder import load_model
from madda_rs.run.streams import stream_seed
from madda_rs.training import train

from digits import bars

# t-SNE is seeded from the run's 'figures' stream (these runs have seed 0)
TSNE_SEED = stream_seed(0, "figures", 1) % 2**32

# name -> (train images and labels, test images and labels): the runs' in-memory domains
DOMAINS = {"bars-a": (bars(120, 16, 0), bars(40, 16, 1)), "bars-b": (bars(100, 16, 2), bars(60, 16, 3))}
CLASSES = list(range(10))


def _config(seed: int) -> TrainConfig:
    return TrainConfig(src="bars-a", tgt="bars-b", epochs_source=1, epochs_target=2, batch_size=40,
                       target_batch_size=40, embedding_dim=16, eval_every=1, checkpoint_every=5, device="cpu",
                       threads=1, seed=seed)


@pytest.fixture(autouse=True, scope="module")
def one_openmp_thread():
    """t-SNE fits of a hundred points are all OpenMP barriers; on 2 busy cores each barrier waits
    for a descheduled thread, and a sub-second fit took over a minute."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs (seeds 0 and 1) of one experiment, trained on in-memory images."""
    (src, src_test), (tgt, tgt_test) = DOMAINS["bars-a"], DOMAINS["bars-b"]
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        train(_config(seed), str(root / f"seed{seed}"), source=src, target=tgt[0], target_test=tgt_test,
              source_test=src_test)
    return root


@pytest.fixture
def run_copies(runs, tmp_path):
    """Copies of the two runs, free to edit, with the confusion matrix training will soon record."""
    copies = []
    for seed in (0, 1):
        run = shutil.copytree(runs / f"seed{seed}", tmp_path / f"seed{seed}")
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["confusion"] = (np.eye(10, dtype=int) * 4 + 1).tolist()
        metrics["classes"] = CLASSES
        (run / "metrics.json").write_text(json.dumps(metrics))
        copies.append(run)
    return copies


def _readable(path):
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100, (path, image.shape)


def _data(with_labels: bool = True):
    (src, _), (tgt, tgt_test) = DOMAINS["bars-a"], DOMAINS["bars-b"]
    return prepare_data(_config(0), source=src, target=tgt[0], target_test=tgt_test if with_labels else None)


@pytest.fixture
def tsne_inputs(monkeypatch):
    """Records the shape of every array t-SNE is fitted on."""
    fitted = []
    real = sklearn.manifold.TSNE.fit_transform

    def spy(self, x, *args, **kwargs):
        fitted.append((x.shape, self.random_state, self.init))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(sklearn.manifold.TSNE, "fit_transform", spy)
    return fitted


@pytest.mark.parametrize("changes, n_centers",
                         [({}, 10), ({"centers": "kmeans"}, 10), ({"method": "adda"}, 0), ({"magnet": False}, 0)])
def test_tsne_embeds_subsampled_points_and_the_centres_in_one_fit(runs, tmp_path, tsne_inputs, changes, n_centers):
    config = {**json.loads((runs / "seed0" / "config.json").read_text()), **changes}
    if changes.get("method") == "adda":  # an ADDA run's config.json holds none of M-ADDA's own settings
        from madda_rs.methods.common import AdversarialSettings
        from madda_rs.methods.madda import MaddaSettings

        own = {f.name for f in dataclasses.fields(MaddaSettings)} - {f.name for f in dataclasses.fields(AdversarialSettings)}
        config = {k: v for k, v in config.items() if k not in own}
    models = load_model(runs / "seed0" / "source.pt"), load_model(runs / "seed0" / "target.pt")
    path = tsne_figure(*models, _data(), config, tmp_path / "tsne.png", tsne_points=30)
    assert path == tmp_path / "tsne.png"
    _readable(path)
    # two panels (before, after), each 30 source + 30 target points and the centres, seeded and PCA-initialised
    assert tsne_inputs == [((30 + 30 + n_centers, 16), TSNE_SEED, "pca")] * 2


def test_tsne_without_target_labels_draws_the_target_training_images(runs, tmp_path, tsne_inputs):
    config = json.loads((runs / "seed0" / "config.json").read_text())
    models = load_model(runs / "seed0" / "source.pt"), load_model(runs / "seed0" / "target.pt")
    _readable(tsne_figure(*models, _data(with_labels=False), config, tmp_path / "tsne.png", tsne_points=1000))
    assert tsne_inputs == [((120 + 100 + 10, 16), TSNE_SEED, "pca")] * 2  # fewer images than tsne_points: all of them


def test_a_run_in_its_own_folder_gets_curves_and_confusion_and_no_tsne_for_in_memory_data(run_copies, caplog):
    run = run_copies[0]
    with caplog.at_level(logging.WARNING, logger="madda_rs"):
        written = plot_runs([str(run)])
    assert written == [run / "curves.png", run / "confusion.png"]
    for path in written:
        _readable(path)
    assert "no t-SNE" in caplog.text and "bars-a" in caplog.text  # why: the in-memory domain is unknown


def test_a_run_whose_data_can_be_rebuilt_gets_its_tsne(run_copies, monkeypatch, tsne_inputs):
    for name, (train_set, test_set) in DOMAINS.items():
        def load(train, config, train_set=train_set, test_set=test_set):
            return as_image_set(train_set if train else test_set, name)

        monkeypatch.setitem(REGISTRY, name, RegisteredDomain(name, load, None))
    written = plot_runs([str(run_copies[0])], tsne_points=50)
    assert written == [run_copies[0] / name for name in ("curves.png", "tsne.png", "confusion.png")]
    _readable(run_copies[0] / "tsne.png")
    assert tsne_inputs == [((50 + 50 + 10, 16), TSNE_SEED, "pca")] * 2  # the target test set (60 images), subsampled


def test_several_runs_share_one_curves_figure_in_the_out_folder(run_copies, tmp_path, caplog):
    (run_copies[1] / "source.pt").unlink()  # as in a run committed to git
    with caplog.at_level(logging.WARNING, logger="madda_rs"):
        written = plot_runs([str(r) for r in run_copies], str(tmp_path / "figs"))
    figs = tmp_path / "figs"
    assert written == [figs / "curves.png", figs / "time.png", figs / "seed0-confusion.png",
                       figs / "seed1-confusion.png"]
    for path in written:
        _readable(path)
    assert "source.pt missing" in caplog.text
    assert not (run_copies[0] / "curves.png").exists()  # run folders are left alone

    only = plot_runs([str(r) for r in run_copies], str(tmp_path / "time"), figures=("time",))
    assert only == [tmp_path / "time" / "time.png"]
    with pytest.raises(ValueError, match="unknown figures"):
        plot_runs([str(r) for r in run_copies], figures=("tsne", "bars"))


def test_the_command_line_names_the_same_figures():
    from madda_rs.cli import FIGURES

    assert FIGURES == plots.FIGURES


def _fake_run(seed, accuracies, **config):
    history = [{"epoch": e, "magnet_loss": 1.0 / (e + 1), **({"target_accuracy": a} if a is not None else {})}
               for e, a in enumerate(accuracies)]
    base = {"src": "mnist", "tgt": "usps", "method": "madda", "preset": "paper", "lr": 1e-4, "seed": seed}
    return {**base, **config}, {"history": {"source": [], "target": history}}


def test_curves_group_seeds_of_one_experiment_and_skip_unrecorded_keys(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    runs = [_fake_run(0, [None, 0.5, 0.7]), _fake_run(1, [None, 0.6, 0.9], device="cuda", select="last"),
            _fake_run(0, [0.2, 0.3, 0.4], lr=1e-3, overridden=["lr"])]
    assert curves_figure(runs, tmp_path / "curves.png") == tmp_path / "curves.png"
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["target test accuracy", "center magnet loss"]
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]  # one legend under the panels
    assert legend == ["MNIST→USPS madda paper, lr=0.0001 (2 seeds)", "MNIST→USPS madda paper, lr=0.001 (1 seed)"]
    mean_line = axes[0].get_lines()[0]
    assert list(mean_line.get_xdata()) == [2, 3]  # epoch + 1, evaluation epochs only
    assert np.allclose(mean_line.get_ydata(), [0.55, 0.8])
    assert len(axes[0].collections) == 1  # a min-max band for the group of two, none for the single run


def test_curves_are_not_drawn_without_target_epochs(tmp_path):
    config, metrics = _fake_run(0, [])
    assert curves_figure([(config, metrics)], tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_confusion_matrix_with_a_class_never_seen(tmp_path):
    counts = [[5, 1, 0], [0, 0, 0], [2, 0, 7]]  # class 1 absent from the test set: its row stays zero
    _readable(confusion_figure(counts, ["a", "b", "c"], tmp_path / "confusion.png", "title"))


def test_missing_runs_are_refused_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/config.json is missing"):
        plot_runs([str(tmp_path / "nowhere")])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="half/metrics.json is missing"):
        plot_runs([str(tmp_path / "half")], str(tmp_path / "figs"))
    assert not (tmp_path / "figs").exists()  # refused before anything was drawn


def test_bad_arguments_are_refused_before_drawing(run_copies, tmp_path):
    other = shutil.copytree(run_copies[0], tmp_path / "elsewhere" / "seed0")
    with pytest.raises(ValueError, match="overwrite each other"):
        plot_runs([str(run_copies[0]), str(other)], str(tmp_path / "figs"))
    with pytest.raises(ValueError, match="tsne_points must be at least 1, got 0"):
        plot_runs([str(run_copies[0])], tsne_points=0)
    assert not (tmp_path / "figs").exists() and not (run_copies[0] / "curves.png").exists()


def _timed(run, start, per_epoch, source_only):
    config, metrics = run
    for h in metrics["history"]["target"]:
        h["wall_seconds"] = start + per_epoch * (h["epoch"] + 1)
    metrics["history"]["source"] = [{"epoch": 0, "wall_seconds": start}]
    metrics["source_only_accuracy"] = source_only
    return config, metrics


def test_time_figure_puts_each_task_in_a_panel_and_starts_at_source_only(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    runs = [_timed(_fake_run(0, [None, 0.5, 0.7]), 10.0, 2.0, 0.4), _timed(_fake_run(1, [None, 0.7, 0.9]), 12.0, 2.0, 0.6),
            _timed(_fake_run(0, [0.8, 0.9, 0.95], preset="improved"), 5.0, 1.0, 0.7),
            _timed(_fake_run(0, [0.6, 0.7, 0.8], src="usps", tgt="mnist"), 5.0, 1.0, 0.5),
            _fake_run(0, [0.1, 0.2])]  # no wall times: left out
    assert time_figure(runs, tmp_path / "time.png") == tmp_path / "time.png"
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["MNIST → USPS", "USPS → MNIST"]
    paper = axes[0].get_lines()[0]
    assert np.allclose(paper.get_xdata(), [11.0, 15.0, 17.0])  # source end, then evaluations; mean over seeds
    assert np.allclose(paper.get_ydata(), [0.5, 0.6, 0.8])
    assert axes[0].get_lines()[1].get_color() != paper.get_color()
    assert axes[1].get_lines()[0].get_color() == paper.get_color()  # one colour per preset in every panel
    assert time_figure([_fake_run(0, [0.1])], tmp_path / "none.png") is None
