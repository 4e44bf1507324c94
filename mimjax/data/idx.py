"""IDX data sets (the MNIST file format): `data.source=idx:DIR`.

    mimjax train --config demo --workdir W --config.data.source=idx:/usr/share/datasets/fashion-mnist

DIR holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each raw or gzipped (`.gz`),
as MNIST, Fashion-MNIST and KMNIST ship them; `split` "train" reads the train files,
"test" the t10k ones. The format (LeCun's): a big-endian magic 0x0000 08 NDIM (08: unsigned
bytes; 2051 for the images, NDIM 3; 2049 for the labels, NDIM 1), NDIM big-endian int32
sizes, then the bytes. Items are {"image": uint8 [H, W, 3] (grayscale repeated), "label":
int}. Everything is read and checked when the source is made, so a missing file, a bad
magic number, a short file or a count mismatch is one `ValueError` line before any work.

Fashion-MNIST installs offline as a Debian package: `apt-get install dataset-fashion-mnist`
puts it in /usr/share/datasets/fashion-mnist. With internet, TFDS has the same data
(`tfds:fashion_mnist`) and CIFAR-10 (`tfds:cifar10`).
"""
from __future__ import annotations

import gzip
import os

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (f"install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (then idx:{FASHION_MNIST_DIR}), "
                "or use TFDS (tfds:fashion_mnist)")
SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
MAGIC = {3: 2051, 1: 2049}  # number of dimensions -> magic of unsigned-byte IDX files


def _find(directory: str, prefix: str, kind: str) -> str:
    """The path of `{prefix}-{kind}-ubyte[.gz]` (or MNIST's `{prefix}-images.idx3-ubyte`)."""
    names = [f"{prefix}-{kind}-ubyte", f"{prefix}-{kind.replace('-', '.')}-ubyte"]
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    raise ValueError(f"idx:{directory}: no {names[0]}[.gz] in it; expected an IDX data set "
                     f"({{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]); {INSTALL_HINT}")


def read_idx(path: str, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file of `ndim` dimensions (gzip or raw); ValueError naming
    the file for a bad magic number or a short file."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip: "Not a gzipped file", "Compressed file ended before ..."
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than an IDX header ({header} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != MAGIC[ndim]:
        raise ValueError(f"{path}: magic number {magic}, expected {MAGIC[ndim]} (an IDX file of "
                         f"{ndim}-d unsigned bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(data) - header < size:
        raise ValueError(f"{path}: truncated: {len(data) - header} bytes of data, expected {size} for shape {shape}")
    return np.frombuffer(data, np.uint8, size, header).reshape(shape)


class IdxImages:
    """A split of an IDX data set: `images` uint8 [N, H, W], `labels` int32 [N]."""

    def __init__(self, directory: str, split: str = "train"):
        if not os.path.isdir(directory):
            raise ValueError(f"data.source=idx:{directory}: no such directory; {INSTALL_HINT}")
        if split not in SPLITS:
            raise ValueError(f"idx:{directory} split {split!r}: expected train or test")
        prefix = SPLITS[split]
        images = read_idx(_find(directory, prefix, "images-idx3"), 3)  # [N, H, W]
        labels = read_idx(_find(directory, prefix, "labels-idx1"), 1)  # [N]
        if len(images) != len(labels):
            raise ValueError(f"idx:{directory} {split}: {len(images)} images but {len(labels)} labels; "
                             f"expected one label per image")
        self.root, self.split = directory, split
        self.what = f"data.source=idx:{directory}"
        self.images, self.labels = images, labels.astype(np.int32)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": np.repeat(self.images[i][:, :, None], 3, axis=-1), "label": int(self.labels[i])}
