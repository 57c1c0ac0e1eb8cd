"""The data layer: the MNIST/USPS readers, registered domains, shapes, ranges, subsets at the
ADDA protocol's real sizes, and error messages."""

import bz2
import shutil

import numpy as np
import pytest
import torch

from madda_rs.config import TrainConfig
from madda_rs.data.domains import REGISTRY, load_named
from madda_rs.data.files import DataError, read_uint8, resize_usps


def _config(data_dir, **kw):
    return TrainConfig(src="mnist", tgt="usps", data_dir=data_dir, download=False, **kw)


@pytest.mark.parametrize("name", ["mnist", "usps"])
def test_train_and_test_splits_are_28x28_in_minus1_1(data_dir, name):
    for split in load_named(name, _config(data_dir, protocol="full")):
        x = split.floats()  # what a batch becomes: MNIST is kept as uint8 pixels, resized USPS as floats
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert x.min() == -1.0 and x.max() <= 1.0  # background maps to -1 in both
        assert split.labels.dtype == torch.int64 and set(split.labels.tolist()) <= set(range(10))
        assert len(split.images) == len(split.labels)


def test_real_split_sizes(data_dir):
    if "shared" not in data_dir:
        pytest.skip("real data not present")
    assert len(read_uint8("usps", False, data_dir, False)[1]) == 2007
    assert len(read_uint8("mnist", False, data_dir, False)[1]) == 10000
    assert len(read_uint8("usps", True, data_dir, False)[1]) == 7291
    pooled = _config(data_dir, usps_split="pooled", protocol="full")
    assert [len(s) for s in load_named("usps", pooled)] == [7438, 1860]


@pytest.fixture(scope="module")
def adda_sized_dir(tmp_path_factory):
    """More training digits than the ADDA protocol keeps (2,000 MNIST, 1,800 USPS), so it subsets."""
    from digits import make_data_dir

    return str(make_data_dir(tmp_path_factory.mktemp("adda"), n_train=2400, n_test=50, n_train_usps=2100))


def test_adda_protocol_subsets_at_the_papers_sizes(adda_sized_dir):
    assert REGISTRY["mnist"].adda_subset == 2000 and REGISTRY["usps"].adda_subset == 1800
    assert len(load_named("mnist", _config(adda_sized_dir))[0]) == 2000
    assert len(load_named("usps", _config(adda_sized_dir))[0]) == 1800
    assert len(load_named("usps", _config(adda_sized_dir, protocol="full"))[0]) == 2100


def test_subset_follows_subset_seed_apart_from_seed(adda_sized_dir):
    def subset(**kw):
        return load_named("mnist", _config(adda_sized_dir, **kw))[0].images

    base = subset(seed=0)
    assert torch.equal(base, subset(seed=0))
    assert torch.equal(base, subset(seed=5, subset_seed=0))  # training seed alone leaves the data alone
    assert not torch.equal(base, subset(seed=1))  # --seed alone draws another subset ...
    assert not torch.equal(base, subset(seed=0, subset_seed=1))  # ... and so does --subset-seed


def test_usps_resize_modes():
    x = torch.ones(2, 1, 16, 16)
    box = resize_usps(x, "box20")
    assert box.shape == (2, 1, 28, 28)
    assert box[..., :4, :].abs().sum() == 0 and box[..., 4:24, 4:24].min() > 0.99  # digit in the centre 20x20
    assert resize_usps(x, "stretch").min() > 0.99  # fills the frame
    with pytest.raises(ValueError, match="usps_resize"):
        resize_usps(x, "crop")


def test_usps_resize_setting_reaches_the_images(generated_data_dir):
    box = load_named("usps", _config(generated_data_dir))[1].images
    stretch = load_named("usps", _config(generated_data_dir, usps_resize="stretch"))[1].images
    assert (box[..., :4, :] == -1).all() and not (stretch[..., :4, :] == -1).all()


def test_missing_file_names_file_and_remedy(tmp_path):
    with pytest.raises(DataError, match=r"usps\.t\.bz2.*--no-download.*--data-dir"):
        read_uint8("usps", False, tmp_path, download=False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte"):
        read_uint8("mnist", False, tmp_path, download=False)


def test_corrupt_file_is_reported(generated_data_dir, tmp_path):
    shutil.copytree(generated_data_dir, tmp_path / "d")
    (tmp_path / "d" / "usps.t.bz2").write_bytes(bz2.compress(b"not a libsvm file\n"))
    with pytest.raises(DataError, match=r"usps\.t\.bz2.*corrupt"):
        read_uint8("usps", False, tmp_path / "d", download=False)


def test_data_dir_from_environment(generated_data_dir, monkeypatch):
    monkeypatch.setenv("MADDA_DATA_DIR", generated_data_dir)
    assert len(read_uint8("usps", False, None, download=False)[1]) == 300


def test_reads_are_cached_and_read_only(generated_data_dir):
    a = read_uint8("mnist", True, generated_data_dir, False)
    assert a[0] is read_uint8("mnist", True, generated_data_dir, False)[0]
    with pytest.raises(ValueError):
        a[0][0, 0, 0] = 1
    assert isinstance(a[1], np.ndarray)


def test_pooled_usps_split_is_seeded_disjoint_and_whole(generated_data_dir):
    from madda_rs.data.domains import POOLED_USPS_TRAIN, pooled_usps

    config = _config(generated_data_dir, usps_split="pooled")
    train_x, _ = pooled_usps(True, config)
    test_x, _ = pooled_usps(False, config)
    assert len(train_x) + len(test_x) == 600 + 300 and len(train_x) == round(900 * POOLED_USPS_TRAIN / 9298)
    again = pooled_usps(True, config.replace(seed=7))[0]  # the training seed does not move the split
    assert np.array_equal(train_x, again)
    assert not np.array_equal(train_x, pooled_usps(True, config.replace(usps_split_seed=1))[0])


def test_pad3_resize_pads_three_pixels_of_16():
    out = resize_usps(torch.ones(1, 1, 16, 16), "pad3")
    assert out.shape == (1, 1, 28, 28)
    assert out[..., 0, :].max() < 0.05 and out[..., 14, 14] > 0.99  # a 28 * 3/22 ~ 4 pixel border
