"""Small IDX data sets written for the tests: garment-like blobs on black, 10 classes."""
import gzip
import os

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000 08 NDIM, big-endian sizes, data)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_set(n: int, seed: int, size: int = 28):
    """(images uint8 [n, size, size], labels uint8 [n]): a bright rectangle whose shape
    depends on the label, on a black background with a little noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 20, (n, size, size)).astype(np.uint8)
    for i, y in enumerate(labels):
        h, w = 6 + 2 * (y % 5), 6 + 3 * (y // 5) + int(rng.integers(0, 3))
        top, left = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        images[i, top:top + h, left:left + w] = 120 + 10 * y
    return images, labels


def write_idx_dir(root, n_train: int = 96, n_test: int = 40, gz: bool = True) -> str:
    """An IDX data set in `root` as Fashion-MNIST's package lays it out; returns root."""
    os.makedirs(root, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_set(n, seed)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            path = os.path.join(root, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
            data = idx_bytes(arr)
            with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
                f.write(data)
    return str(root)
