"""synth-digits: digits rendered from matplotlib's fonts, one seeded stream per image, cached, and
a registered domain that trains from the command line."""

import json

import numpy as np
import pytest
import torch

import madda_rs.data.folders as folders
from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.data import synth
from madda_rs.data.domains import load_named
from madda_rs.data.geometry import resolve_geometry
from madda_rs.data.run_data import prepare_data
from madda_rs.run.folder import experiment_key

from digits import bars

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """An empty cache per test, so every test renders (or reads) only what it made."""
    monkeypatch.setenv(folders.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _config(**settings):
    return TrainConfig(src="synth-digits", tgt="usps", synth_train_images=40, synth_test_images=20, **settings)


def test_the_font_list_is_every_font_whose_digits_are_digits():
    usable = {p.name for p in synth.font_dir().glob("*.ttf") if synth.is_digit_font(p)}
    assert usable == set(synth.FONTS) and len(synth.FONTS) == len(set(synth.FONTS))
    assert not synth.is_digit_font(synth.font_dir() / "cmex10.ttf")  # delimiters at the digits' codes


def test_a_set_is_the_same_every_time_and_a_prefix_of_any_longer_one(cache, monkeypatch):
    images, labels = synth.render(30, seed=0, train=True, threads=1)
    monkeypatch.setenv(folders.CACHE_ENV, str(cache.parent / "other"))  # render again, not from the cache
    again, _ = synth.render(30, seed=0, train=True, threads=3)
    short, short_labels = synth.render(12, seed=0, train=True, threads=2)
    assert np.array_equal(images, again)  # whatever the thread count
    assert np.array_equal(short, images[:12]) and np.array_equal(short_labels, labels[:12])
    assert not np.array_equal(synth.render(12, seed=1, train=True)[0], short)  # the seed draws the set
    assert not np.array_equal(synth.render(12, seed=0, train=False)[0], short)  # so does the split
    assert len({img.tobytes() for img in images}) == len(images)


def test_labels_are_balanced_in_every_prefix():
    _, labels = synth.render(25, seed=0, train=True)
    assert labels.dtype == np.int64
    for n in (10, 13, 25):
        counts = np.bincount(labels[:n], minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)


def test_the_domain_gives_mnist_geometry_in_minus_one_to_one_with_a_bright_digit_on_a_dark_ground():
    train, test = load_named("synth-digits", _config())
    assert (len(train), len(test)) == (40, 20)  # all rendered images: no ADDA subset
    x = train.floats()
    assert train.images.dtype == torch.uint8 and x.dtype == torch.float32 and train.shape == (1, 28, 28) and train.labels.dtype == torch.int64
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    ground = x.flatten(1).median(dim=1).values  # most pixels are background
    assert (ground < -0.2).all() and (x.flatten(1).max(dim=1).values > ground + 0.6).all()


def test_three_channels_render_colour_in_both_polarities():
    config = resolve_geometry(_config(channels=3))  # a synth-digits source may set channels
    train, _ = load_named("synth-digits", config)
    x = train.floats()
    assert train.shape == (3, 28, 28)
    chroma = x.flatten(2).mean(dim=2).std(dim=1)  # how far apart the channels' means are (noise averages out)
    assert (chroma > 0.05).float().mean() > 0.8  # tinted, not grey
    luma = x.mean(dim=1).flatten(1)
    bright_ground = luma.median(dim=1).values > luma.mean(dim=1)
    assert 0 < int(bright_ground.sum()) < len(x)  # light on dark and dark on light
    with pytest.raises(ValueError, match="channels sets the colour of image folders and synth-digits; the source "
                                         "'mnist' is neither"):
        resolve_geometry(TrainConfig(src="mnist", tgt="synth-digits", channels=3))


def test_a_second_load_comes_from_the_cache(cache, monkeypatch):
    first, labels = synth.render(20, seed=0, train=True)
    monkeypatch.setattr(synth, "_render_all", lambda *a, **k: pytest.fail("rendered again"))
    again, again_labels = synth.render(20, seed=0, train=True)
    assert np.array_equal(first, again) and np.array_equal(labels, again_labels)
    assert len(list(cache.glob("synth-digits-*.npy"))) == 1
    with pytest.raises(pytest.fail.Exception, match="rendered again"):  # another count is another set
        synth.render(21, seed=0, train=True)


def test_a_count_below_one_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="synth_train_images must be an integer >= 1, got 0"):
        _config().replace(synth_train_images=0)
    with pytest.raises(ValueError, match="synth_test_images must be an integer >= 1, got -5"):
        _config().replace(synth_test_images=-5)
    with pytest.raises(ValueError, match="synth_test_images must be >= 1, got 0"):
        synth.render(0, seed=0, train=False)


def test_rendering_shows_progress():
    bars_made = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.desc, self.done = total, desc, 0
            bars_made.append(self)

        def update(self, n=1):
            self.done += n

        def close(self):
            pass

    prepare_data(_config(), target=bars(20, 28, 0)[0], progress=Bar)
    assert [(b.desc, b.total, b.done) for b in bars_made] == [
        ("rendering synth-digits train", 40, 40), ("rendering synth-digits test", 20, 20)]


def test_the_synth_settings_do_not_split_older_runs_from_new_ones():
    new = _config().to_dict()
    old = {k: v for k, v in new.items() if not k.startswith("synth_")}  # saved before the settings existed
    assert experiment_key(old) == experiment_key(TrainConfig.from_dict(old).to_dict())
    assert experiment_key(old) != experiment_key({**new, "synth_seed": 1})


def test_a_run_trains_from_synth_digits_on_the_command_line(generated_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--src", "synth-digits", "--tgt", "usps", "--data-dir", generated_data_dir,
                 "--synth-train-images", "200", "--synth-test-images", "50", "--epochs-source", "1",
                 "--epochs-target", "1", "--threads", "1", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert "synth-digits -> usps" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["synth_seed"], config["synth_train_images"], config["synth_test_images"]) == (0, 200, 50)
    assert config["class_names"] == [str(c) for c in range(10)]
    assert json.loads((out / "metrics.json").read_text())["source_accuracy"] is not None  # on the synth test set
