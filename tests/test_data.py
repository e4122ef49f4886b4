"""Data sets: fixed splits, uint8 NCHW, validation carved from training, clear errors for bad folders."""

import numpy as np
import pytest

from tests.conftest import write_image_folder
from trainables.data import ImageSplits, load_dataset
from trainables.errors import UserError


def test_digits_served_as_32px_rgb_with_fixed_splits():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape[1:] == (3, 32, 32) and a.train_x.dtype == np.uint8 and a.train_y.dtype == np.int64
    assert len(a.train_y) + len(a.val_y) + len(a.test_y) == 1797
    assert a.num_classes == 10 and set(np.unique(a.val_y)) == set(range(10))
    assert np.array_equal(a.val_x, b.val_x) and np.array_equal(a.test_y, b.test_y)  # same split every time
    assert 0.05 < len(a.val_y) / (len(a.train_y) + len(a.val_y)) < 0.15


def test_splits_do_not_overlap():
    d = load_dataset("digits")
    key = lambda x: {row.tobytes() for row in x}  # noqa: E731
    # digits has a few exact duplicate scans; overlaps beyond those would mean a leaking split
    assert len(key(d.train_x) & key(d.test_x)) <= 3 and len(key(d.val_x) & key(d.test_x)) <= 3


def test_without_test_drops_the_test_split():
    d = load_dataset("digits").without_test()
    assert isinstance(d, ImageSplits) and d.test_x is None and d.test_y is None and len(d.val_y) > 0


def test_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=20, size=24)
    d = load_dataset("folder", root, image_size=16)
    assert d.classes == ("class_0", "class_1", "class_2")
    assert d.train_x.shape[1:] == (3, 16, 16)
    assert len(d.train_y) + len(d.val_y) == 60 and len(d.test_y) == 18


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "has no 'train/' subfolder"),
    (lambda p: write_image_folder(p / "one", classes=1), "a classifier needs at least 2"),
])
def test_bad_image_folders(tmp_path, make, needle):
    with pytest.raises(UserError, match=needle):
        load_dataset("folder", make(tmp_path))


def test_corrupt_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=6)
    (root / "train" / "class_0" / "0.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*0.png"):
        load_dataset("folder", root)


def test_cifar_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(UserError, match="put the extracted 'cifar-10-batches-py' folder there"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
