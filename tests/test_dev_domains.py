"""The development domains (targets that are neither MNIST nor USPS, for choosing label-free
settings honestly): Fashion-MNIST, the photo composites (fashion-m, mnist-m), seven-segment digits
and hand-digits. Each is registered, deterministic, cached, and follows its recipe."""

import importlib.util
import json

import numpy as np
import pytest

from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.data import composite, hand, seven_segment
from madda_rs.data.domains import REGISTRY, load_named

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_skimage = pytest.mark.skipif(not HAS_SKIMAGE, reason="the domains extra (scikit-image) is not installed")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))


def _load(name, data_dir, **kw):
    return load_named(name, TrainConfig(src=name, tgt="usps" if name != "usps" else "mnist", data_dir=data_dir,
                                        download=False, protocol="full", **kw))


def test_the_development_domains_are_registered():
    assert {"fashion-mnist", "fashion-m", "mnist-m", "seven-segment", "hand-digits"} <= set(REGISTRY)


def test_fashion_mnist_reads_torchvisions_layout(data_dir):
    train, test = _load("fashion-mnist", data_dir)
    assert train.shape == test.shape == (1, 28, 28) and train.images.dtype.is_floating_point is False
    assert set(train.labels.tolist()) == set(range(10))
    if "shared" in data_dir:  # the real files: 60,000 / 10,000, the first labels as the README says
        assert (len(train), len(test)) == (60000, 10000) and train.labels[:4].tolist() == [9, 0, 0, 3]


@needs_skimage
def test_composites_are_the_absolute_difference_of_a_photo_patch_and_the_image():
    black, white = np.zeros((6, 28, 28), np.uint8), np.full((6, 28, 28), 255, np.uint8)
    patches = composite.composite(black, "test-composite", True)  # |patch - 0| is the patch itself
    inverted = composite.composite(white, "test-composite", True)  # the same patches, |patch - 255|
    assert patches.shape == (6, 3, 32, 32) and patches.dtype == np.uint8
    assert np.abs(patches.astype(int) + inverted.astype(int) - 255).max() <= 1
    assert patches.std() > 10  # photographs, not a flat colour
    assert not np.array_equal(patches, composite.composite(black, "other-composite", True))  # its own patches


@needs_skimage
@pytest.mark.parametrize("name, grey", [("fashion-m", "fashion-mnist"), ("mnist-m", "mnist")])
def test_a_composite_domain_keeps_its_grey_domains_labels_and_is_cached(generated_data_dir, name, grey):
    train, test = _load(name, generated_data_dir)  # small files: the real ones take 20 s a domain
    base_train, _ = _load(grey, generated_data_dir)
    assert train.shape == (3, 32, 32) and len(train) == len(base_train)
    assert np.array_equal(train.labels.numpy(), base_train.labels.numpy())
    again, _ = _load(name, generated_data_dir)  # from the cache: the same pixels
    assert np.array_equal(again.images.numpy(), train.images.numpy())
    chroma = train.floats()[:50].std(dim=1).mean()
    assert chroma > 0.05  # colour, not grey repeated


def test_seven_segment_digits_light_their_segments():
    train, test = seven_segment.render(True), seven_segment.render(False)
    assert train[0].shape == (seven_segment.TRAIN_IMAGES, 1, 28, 28) and test[0].shape[0] == seven_segment.TEST_IMAGES
    assert np.array_equal(train[1][:20], np.arange(20) % 10)
    ink = {d: train[0][train[1] == d].astype(float).mean() for d in range(10)}
    lit = {d: len(seven_segment.SEGMENTS[d]) for d in range(10)}
    assert ink[8] > ink[0] > ink[7] > ink[1]  # 7, 6, 3 and 2 segments: more segments, more ink
    assert lit[8] == 7 and lit[1] == 2
    assert not np.array_equal(train[0][:10], test[0][:10])  # the splits draw their own images


def test_hand_digits_draw_from_what_is_installed_or_say_how_to_install(monkeypatch, tmp_path):
    try:
        sources = hand.glyph_sources()
    except ValueError:
        sources = []
    if sources:
        images, labels = hand.render(False)
        assert images.shape == (hand.TEST_IMAGES, 1, 28, 28) and np.array_equal(labels[:10], np.arange(10))
        assert images.astype(float).std() > 20
    monkeypatch.setattr(hand, "FONT_ROOT", tmp_path / "no-fonts")
    monkeypatch.setattr(hand, "HERSHEY", ())
    with pytest.raises(ValueError, match="none is installed: pip install Hershey-Fonts .*apt-get install fonts-"):
        hand.glyph_sources()


@needs_skimage
def test_a_development_task_trains_through_the_cli(generated_data_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--src", "fashion-mnist", "--tgt", "fashion-m", "--resize-to-source", "--data-dir",
            generated_data_dir, "--no-download", "--device", "cpu", "--threads", "1", "--epochs-source", "1",
            "--epochs-target", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["target_accuracy"] <= 1.0


@needs_skimage
def test_resize_to_target_gives_every_set_the_targets_shape_and_image_size_one_size(generated_data_dir, tmp_path,
                                                                                   monkeypatch):
    from madda_rs.data.run_data import prepare_data

    monkeypatch.setenv("MADDA_CACHE_DIR", str(tmp_path / "cache"))
    base = dict(src="mnist", tgt="mnist-m", data_dir=generated_data_dir, download=False)
    with pytest.raises(ValueError, match="--resize-to-source.*--resize-to-target"):
        prepare_data(TrainConfig(**base))
    with pytest.raises(ValueError, match="contradict"):
        TrainConfig(**base, resize_to_source=True, resize_to_target=True)
    data = prepare_data(TrainConfig(**base, resize_to_target=True))
    sets = (data.src_train, data.src_test, data.tgt_train, data.tgt_test)
    assert all(s.shape == (3, 32, 32) for s in sets)
    # grey to colour by repetition: the three channels of a resized MNIST digit are one image
    x = data.src_train.floats()[:4]
    assert torch_equal(x[:, 0], x[:, 1]) and torch_equal(x[:, 1], x[:, 2])
    assert data.src_train.labels is not None and len(data.src_train) == len(data.src_train.labels)
    big = prepare_data(TrainConfig(**base, resize_to_target=True, image_size=(64, 64)))
    assert all(s.shape == (3, 64, 64) for s in (big.src_train, big.src_test, big.tgt_train, big.tgt_test))
    small = prepare_data(TrainConfig(**base, resize_to_source=True, image_size=(20, 20)))
    assert all(s.shape == (1, 20, 20) for s in (small.src_train, small.tgt_train, small.tgt_test))
    from madda_rs.data.geometry import resolve_geometry

    with pytest.raises(ValueError, match="image_size sets the size of image folders"):
        resolve_geometry(TrainConfig(**base, image_size=(64, 64)))


def torch_equal(a, b):
    import torch

    return bool(torch.equal(a, b))
