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
    with pytest.raises(UserError, match="unknown dataset 'imagenet21k'"):
        load_dataset("imagenet21k")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz_in_any_layout_is_served_as_nchw_rgb(tmp_path, layout):
    from tests.conftest import write_npz

    splits = load_dataset("npz", write_npz(tmp_path / "d.npz", layout, classes=np.array([f"d{i}" for i in range(10)])))
    assert splits.train_x.shape[1:] == (3, 32, 32) and splits.train_x.dtype == np.uint8
    assert len(splits.train_y) + len(splits.val_y) == 1400 and len(splits.test_y) == 397
    assert splits.classes[:2] == ("d0", "d1") and splits.mean[0] == pytest.approx(splits.mean[2])
    same = load_dataset("npz", tmp_path / "d.npz")
    assert np.array_equal(same.val_x, splits.val_x)  # the same carve every time


def test_npz_with_keras_names_and_no_class_names(tmp_path):
    x = np.zeros((20, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "k.npz", x_train=x, y_train=np.arange(20) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    splits = load_dataset("npz", tmp_path)  # a folder holding one .npz
    assert splits.classes == ("0", "1") and splits.image_size == 8


@pytest.mark.parametrize("arrays,needle", [
    ({"train_x": np.zeros((4, 8, 8), np.float32)}, "train_x is float32; store uint8"),
    ({"train_x": np.zeros((4, 8, 8, 5), np.uint8)}, "train_x has shape (4, 8, 8, 5)"),
    ({"train_x": np.zeros((4, 8, 6, 3), np.uint8), "test_x": np.zeros((2, 8, 6, 3), np.uint8)}, "8x6 (H x W)"),
    ({"train_y": np.arange(3)}, "train_y has shape (3,) for 4 images"),
    ({"train_y": np.array([0.0, 1, 0, 1])}, "labels must be integers"),
    ({"test_y": np.array([0, -1])}, "holds the label -1"),
    ({"classes": np.array(["a"])}, "1 class names for labels up to 1"),
    ({"test_x": np.zeros((2, 16, 16), np.uint8)}, "store both splits at one size"),
])
def test_bad_npz_is_one_line_naming_the_fix(tmp_path, arrays, needle):
    base = {"train_x": np.zeros((4, 8, 8), np.uint8), "train_y": np.array([0, 1, 0, 1]),
            "test_x": np.zeros((2, 8, 8), np.uint8), "test_y": np.array([0, 1])}
    np.savez(tmp_path / "bad.npz", **{**base, **arrays})
    with pytest.raises(UserError, match=None) as err:
        load_dataset("npz", tmp_path / "bad.npz")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_npz_missing_parts_and_files(tmp_path):
    np.savez(tmp_path / "half.npz", train_x=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UserError, match="has no 'train_y' array .it has: train_x."):
        load_dataset("npz", tmp_path / "half.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(UserError, match="is not a readable .npz"):
        load_dataset("npz", tmp_path / "junk.npz")
    with pytest.raises(UserError, match="folder with 2 .npz files"):
        load_dataset("npz", tmp_path)
    with pytest.raises(UserError, match="needs --data-dir FILE.npz"):
        load_dataset("npz")


def test_mnist_format_folder_is_read_as_torchvision_does(tmp_path):
    from tests.conftest import write_mnist_folder

    splits = load_dataset("mnist", write_mnist_folder(tmp_path))
    assert splits.train_x.shape[1:] == (3, 28, 28) and len(splits.test_y) == 397 and splits.num_classes == 10
    assert np.array_equal(splits.train_x[:, 0], splits.train_x[:, 2])  # grayscale repeated to 3 channels
    assert splits.classes[0] == "0 - zero"
    fashion = load_dataset("FashionMNIST".lower(), write_mnist_folder(tmp_path, "FashionMNIST"))
    assert fashion.classes[0] == "T-shirt/top"


def test_torchvision_sets_missing_or_corrupt_say_what_to_put_where(tmp_path):
    from tests.conftest import write_mnist_folder

    for name, needle in (("mnist", "MNIST/raw/ with the four unpacked idx files"), ("svhn", "train_32x32.mat"),
                         ("stl10", "'stl10_binary' folder"), ("kmnist", "KMNIST/raw/")):
        with pytest.raises(UserError, match="not found in") as err:
            load_dataset(name, tmp_path, download=False)
        assert needle in str(err.value)
    root = write_mnist_folder(tmp_path / "m")
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(10))
    with pytest.raises(UserError, match="mnist files in .* are unreadable"):
        load_dataset("mnist", root)
    (tmp_path / "stl10_binary").mkdir()
    with pytest.raises(UserError, match="stl10 files in .* incomplete or corrupt"):
        load_dataset("stl10", tmp_path, download=False)
