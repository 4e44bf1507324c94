"""Random-access image sources: `len(src)` and `src[i] -> {"image": ..., "label": int}`.

`image` is a uint8 [H, W, 3] array (uint8 [H, W, 1] for grayscale TFDS sets), or for image
folders the file's bytes, decoded by the pipeline so an unreadable file is skipped and
counted there instead of failing inside a source. Sources:
- tfds: any TFDS image dataset by name through `tfds.data_source` (ArrayRecord, random
  access, no TensorFlow needed). `imagenet2012` must have been prepared once (docs/recipes.md).
- folder: a user's images, class-per-folder (`root/<class>/**.jpg`, labels = sorted class
  index) or flat (`root/*.jpg`, label 0). Hidden files and folders are ignored.
- embedded: the default demo data, the real photographs bundled in scikit-image's wheel
  (read from the installed `skimage/data/` files, never `skimage.data` fetchers, which may
  download). Drawings, text, binary masks and test patterns are left out; grayscale photos
  become RGB. A stream of random crops: the virtual epoch is 64 crops per photo, item i
  is photo i % n.
- embedded_faces: a small labelled set for k-NN / linear-probe checks, scikit-image's
  `lfw_subset` (200 grayscale 25x25 crops from LFW; per its docstring the first 100 are
  faces -> label 1, the other 100 background -> label 0). Chosen over scikit-learn's
  digits so that no extra dependency is needed.
- synthetic: random images, deterministic per index, for benchmarks.
- arrayrecord:PATH: a directory written by `mimjax prepare imagenet` (ArrayRecord shards of
  the encoded images + labels, metadata.json; `data.split` picks train or validation). Items
  are file bytes as for folders (mimjax/data/imagenet.py).
- idx:DIR: an IDX data set (MNIST's format; Fashion-MNIST from the Debian package
  dataset-fashion-mnist), `data.split` train or test (mimjax/data/idx.py).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from mimjax.data.images import to_rgb_uint8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Photographs among scikit-image's bundled files (not: horse (binary mask), logo, text,
# page, color, chessboard_*, phantom, microaneurysms (tiny), multipage*, gifs).
EMBEDDED_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
                   "retina.jpg", "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "camera.png",
                   "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png", "clock_motion.png",
                   "cell.png")
EMBEDDED_CROPS_PER_PHOTO = 64  # virtual epoch: 17 photos x 64 crops
SOURCES = ("embedded", "embedded_faces", "tfds", "folder", "synthetic", "arrayrecord:PATH", "idx:DIR")


def _skimage_dir() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


class EmbeddedPhotos:
    """17 bundled photos (uint8 [H, W, 3], 300..1000 px a side), label 0."""

    def __init__(self):
        root = _skimage_dir()
        self.photos = []
        for name in EMBEDDED_PHOTOS:
            with Image.open(os.path.join(root, name)) as im:
                self.photos.append(to_rgb_uint8(im))

    def __len__(self):
        return len(self.photos) * EMBEDDED_CROPS_PER_PHOTO

    def __getitem__(self, i):
        return {"image": self.photos[i % len(self.photos)], "label": 0}


class EmbeddedFaces:
    """200 images uint8 [25, 25, 3]; label 1 for the first 100 (faces), 0 for the rest."""

    def __init__(self):
        faces = np.load(os.path.join(_skimage_dir(), "lfw_subset.npy"))  # float64 [200, 25, 25] in [0, 1]
        self.images = np.repeat((faces * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
        self.labels = (np.arange(len(faces)) < 100).astype(np.int32)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


class Synthetic:
    """`size` random uint8 [image_size, image_size, 3] images; item i is the same every time."""

    def __init__(self, size: int, image_size: int = 256):
        if size <= 0:
            raise ValueError(f"data.synthetic_size={size}: expected a positive number of images")
        self.size, self.image_size = size, image_size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return {"image": rng.integers(0, 256, (self.image_size, self.image_size, 3), np.uint8),
                "label": int(i % 1000)}


def _images_in(directory: str, recursive: bool) -> list[str]:
    """Sorted image paths under `directory` (extension match is case-insensitive)."""
    found = []
    for dirpath, dirnames, names in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [os.path.join(dirpath, n) for n in names
                  if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _links_inside(path: str, root: str) -> bool:
    """A symlinked directory that resolves inside `root` (e.g. a link back to the folder or to
    one of its classes): its images are listed already, so it is skipped, not made a class of
    duplicates. Links to directories elsewhere are followed as usual."""
    if not os.path.islink(path):
        return False
    target, base = os.path.realpath(path), os.path.realpath(root)
    return target == base or target.startswith(base + os.sep)


class ImageFolder:
    """A folder of images: class-per-folder when any sub-folder holds images (labels are
    the sorted sub-folder index; files directly in root are then ignored), else flat (label
    0). Items are {"image": file bytes, "label": int, "path": str}; a file that cannot be
    opened any more (deleted mid-run) gives image b"" and "error", skipped by the pipeline."""

    def __init__(self, root: str):
        if not root or not os.path.isdir(root):
            raise ValueError(f"data.folder={root!r}: expected an existing directory of images")
        self.root = root
        classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
                         and not _links_inside(os.path.join(root, d), root))
        per_class = [_images_in(os.path.join(root, c), recursive=True) for c in classes]
        if any(per_class):
            self.classes = classes
            self.files = [(p, label) for label, paths in enumerate(per_class) for p in paths]
        else:
            self.classes = []
            self.files = [(p, 0) for p in _images_in(root, recursive=False)]
        if not self.files:
            raise ValueError(f"data.folder={root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
                             f"neither directly nor in class sub-folders")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        try:
            with open(path, "rb") as f:
                return {"image": f.read(), "label": label, "path": path}
        except OSError as e:  # deleted or made unreadable since the listing: skipped and counted
            return {"image": b"", "label": label, "path": path, "error": f"{type(e).__name__}: {e.strerror or e}"}

    def fingerprint(self) -> dict:
        """{"num_files", "files_hash"}: the file list as it was listed (sorted paths relative
        to the root, with their labels), stored in the input state so a resume can say that
        files were added or removed (the shuffled order then differs)."""
        import hashlib

        h = hashlib.sha256()
        for path, label in self.files:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\n".encode())
        return {"num_files": len(self.files), "files_hash": h.hexdigest()[:16]}


def tfds_source(name: str, split: str = "train", data_dir: str | None = None, manual_dir: str | None = None):
    """`tfds.data_source(name, split)`: items {"image": uint8 [H, W, C], "label": int, ...}.

    With `manual_dir` (where e.g. imagenet2012's tar files are) a missing dataset is
    prepared first; otherwise nothing is downloaded or built."""
    import tensorflow_datasets as tfds

    # Check the name first: a typo should not cost a failed preparation.
    if name.split(":")[0].split("/")[0] not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(f"data.name={name!r} is not a TFDS dataset (see tfds.list_builders())")
    kwargs = {"data_dir": data_dir or None}
    if manual_dir:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)}
    try:
        return tfds.data_source(name, split=split, download=bool(manual_dir), **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with what the user must do
        raise ValueError(f"TFDS dataset {name!r} split {split!r} could not be opened from "
                         f"data_dir={data_dir or 'the TFDS default'} ({type(e).__name__}: {e}); prepare it "
                         f"once as ArrayRecord (`tfds build {name} --file_format=array_record`)") from e


def make_source(data_config):
    """The source a `data` config names. Keys read (attribute access; "" and None both mean
    unset): source, and per source: tfds: name, split, data_dir, manual_dir; folder:
    folder; synthetic: synthetic_size; arrayrecord:PATH and idx:DIR: split."""
    kind = data_config.source
    if kind.startswith("idx:"):
        from mimjax.data.idx import IdxImages

        return IdxImages(kind.partition(":")[2], data_config.split or "train")
    if kind.startswith("arrayrecord:"):
        from mimjax.data.imagenet import ArrayRecordImages

        return ArrayRecordImages(kind.partition(":")[2], data_config.split or "train")
    if kind == "tfds":
        return tfds_source(data_config.name, data_config.split, data_config.data_dir, data_config.manual_dir)
    if kind == "folder":
        return ImageFolder(data_config.folder)
    if kind == "embedded":
        return EmbeddedPhotos()
    if kind == "embedded_faces":
        return EmbeddedFaces()
    if kind == "synthetic":
        return Synthetic(data_config.synthetic_size)
    raise ValueError(f"data.source={kind!r}: expected one of {', '.join(SOURCES)}")
