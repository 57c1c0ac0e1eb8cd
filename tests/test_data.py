"""The data layer: shapes, ranges, subsets, determinism and error messages."""

import bz2
import shutil

import pytest
import torch

from madda_rs.data import ADDA_SUBSET, DataError, load_domain, resize_usps


@pytest.mark.parametrize("name", ["mnist", "usps"])
def test_train_and_test_splits_are_28x28_in_minus1_1(data_dir, name):
    for train in (True, False):
        d = load_domain(name, train, data_dir, download=False)
        assert d.images.shape[1:] == (1, 28, 28) and d.images.dtype == torch.float32
        assert d.images.min() >= -1.0 and d.images.max() <= 1.0
        assert d.images.min() == -1.0  # background maps to -1 in both domains
        assert d.labels.dtype == torch.int64 and set(d.labels.tolist()) <= set(range(10))
        assert len(d.images) == len(d.labels)


def test_real_split_sizes(data_dir):
    if "shared" not in data_dir:
        pytest.skip("real data not present")
    assert len(load_domain("usps", False, data_dir, download=False)) == 2007
    assert len(load_domain("mnist", False, data_dir, download=False)) == 10000
    assert len(load_domain("usps", True, data_dir, download=False)) == 7291


@pytest.mark.parametrize("name", ["mnist", "usps"])
def test_subsets_are_seeded(generated_data_dir, name):
    a = load_domain(name, True, generated_data_dir, download=False, subset=100, seed=3)
    b = load_domain(name, True, generated_data_dir, download=False, subset=100, seed=3)
    c = load_domain(name, True, generated_data_dir, download=False, subset=100, seed=4)
    assert len(a) == 100
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


def test_adda_subset_sizes_are_the_papers():
    assert ADDA_SUBSET == {"mnist": 2000, "usps": 1800}


def test_usps_resize_modes():
    x = torch.ones(2, 1, 16, 16)
    box = resize_usps(x, "box20")
    assert box.shape == (2, 1, 28, 28)
    assert box[..., :4, :].abs().sum() == 0 and box[..., 4:24, 4:24].min() > 0.99  # digit in the centre 20x20
    assert resize_usps(x, "stretch").min() > 0.99  # fills the frame
    with pytest.raises(ValueError, match="usps_resize"):
        resize_usps(x, "crop")


def test_missing_file_names_file_and_remedy(tmp_path):
    with pytest.raises(DataError, match=r"usps\.t\.bz2.*--no-download.*--data-dir"):
        load_domain("usps", False, tmp_path, download=False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte"):
        load_domain("mnist", False, tmp_path, download=False)


def test_corrupt_file_is_reported(generated_data_dir, tmp_path):
    shutil.copytree(generated_data_dir, tmp_path / "d")
    (tmp_path / "d" / "usps.t.bz2").write_bytes(bz2.compress(b"not a libsvm file\n"))
    with pytest.raises(DataError, match=r"usps\.t\.bz2.*corrupt"):
        load_domain("usps", False, tmp_path / "d", download=False)


def test_data_dir_from_environment(generated_data_dir, monkeypatch):
    monkeypatch.setenv("MADDA_DATA_DIR", generated_data_dir)
    assert len(load_domain("usps", False, download=False)) == 300
