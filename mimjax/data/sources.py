"""Random-access image sources: `len(src)` and `src[i] -> {"image": ..., "label": int}`.

`image` is a uint8 [H, W, 3] array, or for image folders the file's bytes (decoded, and
skipped if unreadable, by the pipeline). Sources:
- tfds: any TFDS image dataset by name through `tfds.data_source` (ArrayRecord; no
  TensorFlow needed). `imagenet2012` must have been prepared once (see README).
- folder: a user's images, class-per-folder (`root/<class>/*.jpg`, labels = sorted class
  index) or flat (`root/*.jpg`, label 0).
- embedded: the real photographs bundled in scikit-image's wheel (no download): the
  default demo data, a stream of random crops (item i is photo i % n).
- embedded_faces: scikit-image's `lfw_subset`, 200 grayscale 25x25 images, the first 100
  faces (label 1), the rest not (label 0): a small labelled set for evaluation.
- synthetic: random images, deterministic per index, for benchmarks.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Photographs among scikit-image's bundled files (skipping drawings, text and binary masks).
EMBEDDED_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
                   "retina.jpg", "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "camera.png",
                   "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png", "clock_motion.png",
                   "cell.png")
EMBEDDED_CROPS_PER_PHOTO = 64  # virtual epoch: 17 photos x 64 crops
SOURCES = ("tfds", "folder", "embedded", "embedded_faces", "synthetic")


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Any PIL image (L, P, CMYK, I;16, RGBA, ...) -> uint8 [H, W, 3]."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, np.float64)
        im = Image.fromarray((a / max(a.max(), 1) * 255).astype(np.uint8))
    return np.asarray(im.convert("RGB"))


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return to_rgb_uint8(im)


def _skimage_dir() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


class EmbeddedPhotos:
    def __init__(self):
        root = _skimage_dir()
        self.photos = [to_rgb_uint8(Image.open(os.path.join(root, f))) for f in EMBEDDED_PHOTOS]

    def __len__(self):
        return len(self.photos) * EMBEDDED_CROPS_PER_PHOTO

    def __getitem__(self, i):
        return {"image": self.photos[i % len(self.photos)], "label": 0}


class EmbeddedFaces:
    def __init__(self):
        faces = np.load(os.path.join(_skimage_dir(), "lfw_subset.npy"))  # [200, 25, 25] in [0, 1]
        self.images = np.repeat((faces * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
        self.labels = (np.arange(len(faces)) < 100).astype(np.int32)  # first 100 are faces

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


class Synthetic:
    def __init__(self, size: int, image_size: int = 256):
        self.size, self.image_size = size, image_size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return {"image": rng.integers(0, 256, (self.image_size, self.image_size, 3), np.uint8),
                "label": int(i % 1000)}


class ImageFolder:
    """Files are read lazily; decoding (and skipping bad files) happens in the pipeline."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise ValueError(f"data.folder={root!r}: expected an existing directory of images")
        is_image = lambda f: f.lower().endswith(IMAGE_EXTENSIONS)
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        files = []
        for label, c in enumerate(classes):
            for dirpath, _, names in sorted(os.walk(os.path.join(root, c))):
                files += [(os.path.join(dirpath, n), label) for n in sorted(names) if is_image(n)]
        if not classes:
            files = [(os.path.join(root, n), 0) for n in sorted(os.listdir(root)) if is_image(n)]
        if not files:
            raise ValueError(f"data.folder={root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
                             f"neither directly nor in class sub-folders")
        self.files, self.classes = files, classes

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        with open(path, "rb") as f:
            return {"image": f.read(), "label": label, "path": path}


def tfds_source(name: str, split: str, data_dir: str = "", manual_dir: str = ""):
    import tensorflow_datasets as tfds

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


def make_source(dcfg):
    """The source a `data` config section names (see mimjax/config.py)."""
    kind = dcfg.source
    if kind == "tfds":
        return tfds_source(dcfg.name, dcfg.split, dcfg.data_dir, dcfg.manual_dir)
    if kind == "folder":
        return ImageFolder(dcfg.folder)
    if kind == "embedded":
        return EmbeddedPhotos()
    if kind == "embedded_faces":
        return EmbeddedFaces()
    if kind == "synthetic":
        return Synthetic(dcfg.synthetic_size)
    raise ValueError(f"data.source={kind!r}: expected one of {', '.join(SOURCES)}")
