"""MAE image transforms in NumPy/PIL (host side, deterministic given a numpy Generator).

Pre-training (MAE's `transform_train`): RandomResizedCrop(size, scale=(0.2, 1.0),
ratio=(3/4, 4/3), bicubic) with torchvision's algorithm (10 tries, then a center crop),
horizontal flip with p = 0.5, /255 and ImageNet mean/std. Evaluation: resize the shorter
side to int(size / 0.875) (bicubic), center crop `size`, mean/std. PIL's resize is the
one torchvision calls for PIL images, so crops match torchvision pixel for pixel.

The pipeline's training path for encoded JPEGs (`train_crop_uint8`) decodes with
libjpeg-turbo through simplejpeg (the same pixels as PIL's decoder, measured equal, but
without PIL's buffer copies), draws the box from the header's size, uses libjpeg's
DCT scaling (1/2, 1/4, 1/8: the SIMD ones; 3/4 etc. were measured slower than a full
decode) when the crop stays >= 2 x `size` on both sides at that scale, and resizes with
OpenCV (`fast_resize`: 7-10x less CPU than PIL's bicubic, measured on two CPUs, within
`FAST_RESIZE_BOUND` uint8 levels of it on average, `FAST_RESIZE_BOUND_LARGE` for large
photos). The boxes are torchvision's either way; decoded arrays (embedded photos, TFDS)
keep PIL's bicubic, pixel for pixel torchvision's. It returns uint8: normalisation is
`normalize` on a whole batch (host) or on the device (prefetch.py).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

try:  # libjpeg-turbo without PIL's copies; optional: without it PIL decodes
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is in requirements.txt
    simplejpeg = None
try:  # OpenCV's SIMD resize for the JPEG path; optional: without it PIL resizes
    import cv2
except ImportError:  # pragma: no cover - opencv-python-headless is in requirements.txt
    cv2 = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # 224 / 256


CROP_DRAWS = ("torchvision", "mae")


def crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.2, 1.0),
             ratio=(3 / 4, 4 / 3), draw: str = "torchvision") -> tuple[int, int, int, int]:
    """RandomResizedCrop's box -> (top, left, h, w): area fraction ~ U(scale), log aspect
    ~ U(log ratio). draw="torchvision" (RandomResizedCrop.get_params: MAE pre-training and
    fine-tuning): 10 tries until the box fits, then a center crop of the whole image clamped
    to the ratio range. draw="mae" (MAE's util/crop.py, its linear probe's crop): one try,
    each side clamped to the image's."""
    if draw not in CROP_DRAWS:
        raise ValueError(f"crop draw {draw!r}: expected one of {CROP_DRAWS}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10 if draw == "torchvision" else 1):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if draw == "mae":
            w, h = min(w, width), min(h, height)
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3), draw: str = "torchvision") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: crop `crop_box`, then bicubic resize (crop
    first, as torchvision does: PIL's resize(box=...) would filter across the box edge)."""
    return resized_crop(image, crop_box(rng, image.shape[0], image.shape[1], scale, ratio, draw), size)


def resized_crop(image: np.ndarray, box, size: int) -> np.ndarray:
    """uint8 [H, W, 3], box (top, left, h, w) -> uint8 [size, size, 3] (torchvision's
    F.resized_crop on PIL images: crop, then bicubic resize)."""
    top, left, h, w = box
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def fast_resize(crop: np.ndarray, size: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [size, size, 3] with OpenCV's SIMD resize, close to PIL's
    antialiased bicubic (within `FAST_RESIZE_BOUND` of it, `FAST_RESIZE_BOUND_LARGE` for
    crops >= 2x the output size): an exact integer area reduction (box averages, OpenCV's
    fast path) while a side is >= 4x `size`, down to 2-4x, then bicubic when enlarging and
    bilinear when shrinking. OpenCV's bicubic does not antialias; its general area mode is
    as slow as PIL; reducing by area to < 2x before the bilinear step was measured further
    from PIL (2.4 levels vs 1.7 on 2000x1500 photos). Without OpenCV, PIL's bicubic."""
    if cv2 is None:
        return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC))
    h, w = crop.shape[:2]
    ky, kx = max(1, h // (2 * size)), max(1, w // (2 * size))
    if ky > 1 or kx > 1:  # an exact integer scale takes OpenCV's fast area path
        crop = cv2.resize(crop, (0, 0), fx=1 / kx, fy=1 / ky, interpolation=cv2.INTER_AREA)
        h, w = crop.shape[:2]
    mode = cv2.INTER_CUBIC if max(h, w) <= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=mode)  # a strided view is fine


# Mean |fast_resize - PIL's bicubic| in uint8 levels over RandomResizedCrop crops of photos, tested
# (tests/data/test_fast_decode.py; bench/input.py's pixel section measures it on the bench's JPEGs):
# crops shrunk < 2x (ImageNet's usual 500x375 to 224) measured ~1.0; larger photos, decoded at a DCT
# scale and reduced by area first, 1.8 (2000x1500 to 224) to 3.7 (1000x750 to 112, a sharper photo).
FAST_RESIZE_BOUND = 1.5
FAST_RESIZE_BOUND_LARGE = 4.0


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG that `decode_jpeg_crop` can decode as PIL would (baseline
    or progressive YCbCr / grayscale, no EXIF rotation), else None (use PIL)."""
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray"):  # CMYK / YCCK: PIL's Adobe handling
        return None
    if b"Exif\x00\x00" in data[:65536] and _exif_orientation(data) not in (0, 1):
        return None  # the folder path rotates by EXIF (images.to_rgb_uint8)
    return h, w


def _exif_orientation(data: bytes) -> int:
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: let PIL's path decide
        return -1


DCT_MARGIN = 2  # decode at >= 2x the output size: the bicubic resize still antialiases


def dct_factor(h: int, w: int, size: int) -> int:
    """The largest of 8, 4, 2, 1 (libjpeg's SIMD-accelerated scalings) such that an h x w
    crop scaled by 1/f is still >= DCT_MARGIN x size on both sides. At margin 1 (only >=
    size) a 224 px crop differed from torchvision's by 0.66 uint8 levels on average at 1/4
    scale, 3-4 levels for crops resized almost 1:1; at margin 2 by 0.22 (bench/input.py)."""
    for f in (8, 4, 2):
        if min(h, w) >= DCT_MARGIN * size * f:
            return f
    return 1


def decode_jpeg_crop(data: bytes, height: int, width: int, box, size: int) -> np.ndarray:
    """A JPEG of `height` x `width` -> uint8 [size, size, 3] of the crop `box` (top, left,
    h, w in full-size pixels): decoded at `dct_factor`'s scale, the box mapped to that
    scale (`scaled_crop`), resized by `fast_resize` (without OpenCV, at factor 1 exactly
    `resized_crop(decode(data))`). Raises ValueError on a corrupt or truncated JPEG
    (libjpeg warnings included)."""
    return fast_resize(scaled_crop(decode_scaled(data, height, width, dct_factor(box[2], box[3], size)),
                                   height, width, box), size)


def decode_scaled(data: bytes, height: int, width: int, f: int) -> np.ndarray:
    """A JPEG of `height` x `width` -> uint8 [ceil(height / f), ceil(width / f), 3] by
    libjpeg-turbo's DCT scaling (f in 1, 2, 4, 8)."""
    if f == 1:
        return simplejpeg.decode_jpeg(data, "RGB")
    return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // f), min_width=-(-width // f))


def scaled_crop(a: np.ndarray, height: int, width: int, box) -> np.ndarray:
    """The crop `box` (top, left, h, w of the full `height` x `width` image) of `a`, that
    image decoded at a smaller scale: a view, its edges rounded to `a`'s pixels (at most
    half a pixel of `a` off)."""
    top, left, h, w = box
    sy, sx = a.shape[0] / height, a.shape[1] / width
    y0, x0 = round(top * sy), round(left * sx)
    y1, x1 = max(y0 + 1, round((top + h) * sy)), max(x0 + 1, round((left + w) * sx))
    return a[y0:y1, x0:x1]


def train_crop_uint8(image, size: int, rng: np.random.Generator, scale=(0.2, 1.0), decode=None,
                     draw: str = "torchvision") -> np.ndarray:
    """MAE's training crop without normalisation: uint8 [H, W, 3] or encoded bytes ->
    uint8 [size, size, 3] (random resized crop of `crop_box` `draw`, then flip with p = 0.5). `rng` draws as in
    `train_transform` (box, then flip), so both give the same crops. Bytes that
    `jpeg_size` accepts take `decode_jpeg_crop`; if libjpeg then fails (corrupt data)
    or for other formats, `decode(bytes) -> uint8 array` (which may raise: unreadable)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data, hw = bytes(image), jpeg_size(image)
        if hw is not None:
            box = crop_box(rng, hw[0], hw[1], scale, draw=draw)
            try:
                out = decode_jpeg_crop(data, hw[0], hw[1], box, size)
            except ValueError:  # corrupt or truncated: PIL decides (decodes or raises)
                out = resized_crop(decode(data), box, size)
        else:
            image = decode(data)
            out = random_resized_crop(image, size, rng, scale, draw=draw)
    else:
        out = random_resized_crop(image, size, rng, scale, draw=draw)
    if rng.uniform() < 0.5:
        out = hflip(out)
    return out


def hflip(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] mirrored left to right, contiguous: OpenCV's copy is ~10x faster than
    NumPy's of a reversed view (which batching would otherwise make)."""
    return cv2.flip(image, 1) if cv2 is not None else np.ascontiguousarray(image[:, ::-1])


def normalize_coefficients(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[np.ndarray, np.ndarray]:
    """float32 (shift, scale) [3] with (x / 255 - mean) / std == (x - shift) * scale (up to
    float32 rounding, < 4e-7). A subtraction, then a multiplication: a form no compiler
    fuses into an FMA, so the host (`normalize`) and the device (prefetch.normalize_images)
    compute the same float32 numbers bit for bit."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return (255.0 * mean).astype(np.float32), (1.0 / (255.0 * std)).astype(np.float32)


def normalize(image_uint8: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 [..., 3] -> float32 [..., 3], (x / 255 - mean) / std (as (x - shift) * scale)."""
    shift, scale = normalize_coefficients(mean, std)
    x = image_uint8.astype(np.float32)
    x -= shift
    x *= scale
    return x


def denormalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """float [..., 3] normalised -> uint8 [..., 3] (rounded, clipped), for PNGs."""
    x = np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator,
                    scale=(0.2, 1.0)) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: random resized crop, flip (p = 0.5),
    normalise. Draws from `rng` in a fixed order (crop, then flip)."""
    return normalize(train_crop_uint8(image, size, rng, scale))


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: shorter side to int(size / 0.875)
    (bicubic; the longer side scaled and truncated as torchvision's Resize), center crop."""
    return normalize(eval_crop_uint8(image, size))


def eval_crop_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """`eval_transform` without the normalisation: uint8 [size, size, 3]."""
    h, w = image.shape[:2]
    short = int(size / EVAL_CROP_FRACTION)
    if h <= w:
        nh, nw = short, int(short * w / h)
    else:
        nh, nw = int(short * h / w), short
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # torchvision CenterCrop
    return np.asarray(im)[top:top + size, left:left + size]
