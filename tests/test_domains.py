"""The user's own image sets: arrays, tensors, Datasets, .npz files; shapes, ranges, registry."""

import numpy as np
import pytest
import torch

from madda_rs.cli import main
from madda_rs.config import TrainConfig
from madda_rs.data.domains import REGISTRY, load_npz, register_domain
from madda_rs.data.images import ImageSet, as_image_set
from madda_rs.data.run_data import prepare_data
from madda_rs.models import EmbeddingNet
from madda_rs.training import train

from digits import bars

CPU = torch.device("cpu")


def test_uint8_and_float_images_map_to_the_same_range():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2): channel added
    a = as_image_set(x)
    b = as_image_set(torch.from_numpy(x[:, None].astype(np.float32) / 255))
    assert a.images.dtype == torch.uint8  # pixels stay uint8 in memory; batches become floats
    assert a.images.shape == (1, 1, 2, 2) and torch.allclose(a.floats(), b.floats())
    assert a.floats().min() == -1 and a.floats().max() == 1 and a.labels is None
    assert torch.equal(a.batch(torch.tensor([0]), torch.device("cpu")), a.floats())


def test_pairs_and_datasets_carry_labels():
    x, y = bars(20, 28, 0)
    from_pair = as_image_set((x, y))

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return torch.from_numpy(x[i]), int(y[i])

    from_ds = as_image_set(Dataset())
    assert torch.equal(from_pair.images, from_ds.images) and torch.equal(from_pair.labels, from_ds.labels)


def test_pil_dataset_is_read():
    from PIL import Image

    x, y = bars(5, 28, 0)
    items = [(Image.fromarray(img[0]), int(lab)) for img, lab in zip(x, y)]
    s = as_image_set(items)
    assert s.images.shape == (5, 1, 28, 28) and s.labels.tolist() == y.tolist()


@pytest.mark.parametrize(
    "data, error, message",
    [
        (np.zeros((2, 3), np.uint8), ValueError, r"\(N, C, H, W\) or \(N, H, W\)"),
        (np.zeros((0, 28, 28), np.uint8), ValueError, "no images"),
        (np.zeros((2, 28, 28, 3), np.uint8), ValueError, "channels-last"),
        (np.full((2, 8, 8), 1.5, np.float32), ValueError, r"float images must lie in \[0, 1\]"),
        (np.full((2, 8, 8), 300, np.int64), ValueError, r"integer images must lie in \[0, 255\]"),
        (np.full((2, 8, 8), np.nan, np.float32), ValueError, "NaN"),
        (np.zeros((2, 8, 8), bool), TypeError, "uint8 or float"),
        ((np.zeros((2, 8, 8), np.uint8), [1]), ValueError, "expected 2 labels"),
        ((np.zeros((2, 8, 8), np.uint8), [0.5, 1]), TypeError, "labels must be integers"),
        ("images.png", TypeError, "expected an array or tensor"),
    ],
)
def test_bad_images_are_refused(data, error, message):
    with pytest.raises(error, match=message):
        as_image_set(data)


def test_shapes_must_agree_unless_resized():
    src = bars(40, 28, 0)
    tgt = bars(30, 32, 1, channels=3)[0]
    config = TrainConfig(src="a", tgt="b")
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*\(3, 32, 32\).*resize_to_source"):
        prepare_data(config, source=src, target=tgt)
    data = prepare_data(config.replace(resize_to_source=True), source=src, target=tgt)
    assert data.tgt_train.shape == (1, 28, 28) and data.tgt_test is None and data.tgt_train.labels is None


def test_the_source_needs_labels_and_target_labels_never_reach_training():
    x, y = bars(40, 28, 0)
    with pytest.raises(ValueError, match="source must be labelled"):
        prepare_data(TrainConfig(src="a", tgt="b"), source=x, target=x)
    data = prepare_data(TrainConfig(src="a", tgt="b"), source=(x, y), target=(x, y))
    assert data.tgt_train.labels is None


def test_encoder_adapts_to_image_size_and_channels():
    for shape in ((3, 32, 32), (1, 16, 16), (1, 28, 28)):
        assert EmbeddingNet(8, shape)(torch.zeros(2, *shape)).shape == (2, 8)
    with pytest.raises(ValueError, match="at least 16x16"):
        EmbeddingNet(8, (1, 12, 12))


def test_npz_files_and_their_errors(tmp_path):
    x, y = bars(30, 28, 0)
    np.savez(tmp_path / "ok.npz", images=x, labels=y, test_images=x[:10], test_labels=y[:10])
    train_set, test_set = load_npz(tmp_path / "ok.npz")
    assert len(train_set) == 30 and len(test_set) == 10 and train_set.name == "ok"
    np.savez(tmp_path / "nokey.npz", pixels=x)
    with pytest.raises(ValueError, match="no 'images' array.*pixels"):
        load_npz(tmp_path / "nokey.npz")
    np.savez(tmp_path / "half.npz", images=x, test_images=x)
    with pytest.raises(ValueError, match="must come together"):
        load_npz(tmp_path / "half.npz")
    np.savez(tmp_path / "shape.npz", images=np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"shape.npz: images.*got \(3, 4\)"):
        load_npz(tmp_path / "shape.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_npz(tmp_path / "bad.npz")


def test_registering_a_domain_is_one_function(monkeypatch):
    monkeypatch.setitem(REGISTRY, "bars", REGISTRY["mnist"])  # restored after the test

    @register_domain("bars", adda_subset=10)
    def _bars(train, config):
        return as_image_set(bars(40 if train else 20, 28, int(train)))

    train_set, test_set = prepare_data(TrainConfig(src="bars", tgt="b"), target=bars(5, 28, 3)[0]).src_train, None
    assert len(train_set) == 10 and test_set is None  # ADDA protocol subset


def _colour_sets(n=300):
    src = bars(n, 28, 0)
    tgt = bars(n, 32, 1, channels=3)
    test = bars(100, 32, 2, channels=3)
    return src, tgt[0], test


def test_user_domain_run_from_python_beats_chance(tmp_path):
    src, tgt, test = _colour_sets()
    config = TrainConfig(src="bars28", tgt="bars32rgb", epochs_source=2, epochs_target=2, resize_to_source=True,
                         device="cpu")
    result = train(config, str(tmp_path / "run"), source=src, target=tgt, target_test=test)
    assert result.target_accuracy > 0.5 and result.source_accuracy is None  # no source test given
    unlabelled = train(config.replace(epochs_target=1), source=src, target=tgt)
    assert unlabelled.target_accuracy is None and unlabelled.source_only_accuracy is None
    assert unlabelled.label_free["pred_classes"] >= 2


def test_user_domain_run_from_npz_on_the_command_line(tmp_path, capsys):
    x, y = bars(300, 16, 0)
    np.savez(tmp_path / "src.npz", images=x, labels=y)
    t = bars(200, 16, 1)
    np.savez(tmp_path / "tgt.npz", images=t[0], test_images=t[0][:100], test_labels=t[1][:100])
    argv = ["train", "--src", str(tmp_path / "src.npz"), "--tgt", str(tmp_path / "tgt.npz"), "--epochs-source", "2",
            "--epochs-target", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    assert float(capsys.readouterr().out.strip().rsplit(" ", 1)[1]) > 0.5
    assert main(["eval", "--run", str(tmp_path / "run"), "--device", "cpu"]) == 0
    np.savez(tmp_path / "tgt.npz", images=t[0], test_images=t[0][:100])
    with pytest.raises(SystemExit):  # unknown name: refused before work
        main(["train", "--src", "svhn", "--tgt", str(tmp_path / "tgt.npz")])
    assert "neither a registered domain" in capsys.readouterr().err
    assert main(argv[:-3] + ["--out", str(tmp_path / "run2"), "--quiet"]) == 1
    assert "must come together" in capsys.readouterr().err


def test_imageset_subset_is_seeded():
    s = ImageSet(torch.arange(100.0).reshape(100, 1, 1, 1), torch.arange(100))
    assert torch.equal(s.subset(10, 3).labels, s.subset(10, 3).labels)
    assert not torch.equal(s.subset(10, 3).labels, s.subset(10, 4).labels)
    assert s.subset(200, 3) is s
