"""The IDX source (idx:DIR) on generated files: gzip and raw, the splits, and one line for
each kind of damage (missing directory, bad magic, short file, count mismatch)."""
import gzip
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "study"))
from idxdata import idx_bytes, make_set, write_idx_dir  # noqa: E402

from mimjax.data.idx import IdxImages, read_idx  # noqa: E402
from mimjax.data.labelled import labelled_sources  # noqa: E402


@pytest.mark.parametrize("gz", [True, False])
def test_reads_both_splits_as_rgb_with_labels(tmp_path, gz):
    root = write_idx_dir(tmp_path, n_train=30, n_test=12, gz=gz)
    images, labels = make_set(30, 0)
    train, test = IdxImages(root, "train"), IdxImages(root, "test")
    assert (len(train), len(test)) == (30, 12)
    item = train[7]
    assert item["image"].shape == (28, 28, 3) and item["image"].dtype == np.uint8
    assert (item["image"] == images[7][:, :, None]).all() and item["label"] == int(labels[7])
    tr, te = labelled_sources(f"idx:{root}", train_split="train", test_split="test")
    assert (len(tr), len(te)) == (30, 12) and te[3]["label"] == int(make_set(12, 1)[1][3])


def test_numpy_reference_of_the_header(tmp_path):
    """The header as LeCun's page gives it: magic 2051, then n, rows, cols (big-endian)."""
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(np.array([2051, 2, 3, 4], ">i4").tobytes() + arr.tobytes())
    assert (read_idx(str(path), 3) == arr).all()


def test_missing_directory_says_what_to_install():
    with pytest.raises(ValueError) as e:
        IdxImages("/no/such/fashion-mnist")
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and "tfds:fashion_mnist" in msg


def _damage(root, name, data: bytes):
    with gzip.open(os.path.join(root, name), "wb") as f:
        f.write(data)


@pytest.mark.parametrize("damage, expected", [
    ("magic", "magic number 2049, expected 2051"),
    ("truncated", "truncated"),
    ("header", "shorter than an IDX header"),
    ("count", "30 images but 29 labels"),
    ("not_gzip", "unreadable"),
])
def test_damaged_files_are_one_line(tmp_path, damage, expected):
    root = write_idx_dir(tmp_path, n_train=30, n_test=12)
    images, labels = make_set(30, 0)
    if damage == "magic":  # a labels file where the images should be
        _damage(root, "train-images-idx3-ubyte.gz", idx_bytes(labels))
    elif damage == "truncated":
        _damage(root, "train-images-idx3-ubyte.gz", idx_bytes(images)[:-100])
    elif damage == "header":
        _damage(root, "train-images-idx3-ubyte.gz", idx_bytes(images)[:9])
    elif damage == "count":
        _damage(root, "train-labels-idx1-ubyte.gz", idx_bytes(labels[:29]))
    else:
        with open(os.path.join(root, "train-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(idx_bytes(labels))  # raw bytes under a .gz name
    with pytest.raises(ValueError) as e:
        IdxImages(root, "train")
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_unknown_split_and_missing_file(tmp_path):
    root = write_idx_dir(tmp_path, n_train=30, n_test=12)
    with pytest.raises(ValueError, match="expected train or test"):
        IdxImages(root, "validation")
    os.remove(os.path.join(root, "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(ValueError, match="no t10k-labels-idx1-ubyte"):
        IdxImages(root, "test")


@pytest.mark.slow
def test_train_refuses_a_corrupt_set_in_one_line(tmp_path):
    from scaffold import run_cli_process

    root = write_idx_dir(tmp_path / "data", n_train=30, n_test=12)
    _damage(root, "train-images-idx3-ubyte.gz", idx_bytes(make_set(30, 0)[0])[:-5])
    r = run_cli_process("train", "--config", "configs/demo.py", "--workdir", tmp_path / "w",
                        f"--config.data.source=idx:{root}", "--config.model.img_size=28",
                        "--config.model.patch_size=4", "--config.batch_size=8")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "truncated" in last and "train-images-idx3-ubyte.gz" in last
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("dataset, expected", [
    ("idx:/no/such/fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("folder:/no/such/dir", "expected an existing directory of images"),
])
def test_eval_knn_with_a_missing_dataset_is_one_line(trained_run, capsys, dataset, expected):
    from scaffold import run_cli_here

    status, out, lines = run_cli_here(capsys, "eval", "knn", "--workdir", trained_run, "--dataset", dataset)
    assert status == 2 and not out and len(lines) == 1 and expected in lines[0], lines
