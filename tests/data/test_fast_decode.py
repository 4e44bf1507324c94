"""The training crop of encoded JPEGs (libjpeg-turbo via simplejpeg, DCT scaling), uint8
batches and the device-side normalisation: same crops as torchvision, same numbers."""
import io
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mimjax.data import augment, images, sources
from mimjax.data.prefetch import normalize_images


def photo(h=375, w=500, seed=0):
    """A real photo (scikit-image's astronaut) cut and resized to h x w."""
    with Image.open(f"{sources._skimage_dir()}/astronaut.png") as im:
        a = images.to_rgb_uint8(im)
    return np.asarray(Image.fromarray(a[seed:, seed:]).resize((w, h), Image.BICUBIC))


def jpeg(a, quality=90, **kw):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def test_jpeg_crops_take_the_decoded_paths_boxes_and_flips():
    """Crops that need the full resolution (no DCT scaling): the same boxes and flips as
    the PIL-decoded path (and so as torchvision, test_augment), resized by `fast_resize`."""
    data = jpeg(photo())
    assert augment.jpeg_size(data) == (375, 500)
    decoded = images.decode(data)
    for seed in range(40):
        fast = augment.train_crop_uint8(data, 224, np.random.default_rng(seed), decode=images.decode)
        assert fast.dtype == np.uint8 and fast.shape == (224, 224, 3) and fast.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(fast, fast_crop(decoded, 224, seed))


def fast_crop(decoded, size, seed):
    """The JPEG path's training crop from the decoded image: torchvision's box and flip
    draws (test_augment), `fast_resize`, NumPy's mirror."""
    rng = np.random.default_rng(seed)
    top, left, h, w = augment.crop_box(rng, *decoded.shape[:2])
    out = augment.fast_resize(decoded[top:top + h, left:left + w], size)
    return out[:, ::-1] if rng.uniform() < 0.5 else out


def pil_bicubic(crop, size):
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC))


@pytest.mark.parametrize("hw, bound, p99", [((375, 500), augment.FAST_RESIZE_BOUND, 16),
                                            ((1500, 2000), augment.FAST_RESIZE_BOUND_LARGE, 24)])
def test_fast_resize_is_within_the_bound_of_torchvision(hw, bound, p99):
    """The pixel bound of OpenCV's resize against torchvision's (PIL decode, crop, bicubic
    resize) on the crops RandomResizedCrop draws from a photo: mean |difference| below the
    bound in uint8 levels over the crops and below 2x it on any one crop, and 99% of
    pixels within `p99` levels (the rest are edges, where bicubic rings)."""
    F = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    data = jpeg(photo(*hw))
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    rng, diffs = np.random.default_rng(0), []
    for _ in range(12):
        box = augment.crop_box(rng, *hw)
        got = augment.decode_jpeg_crop(data, *hw, box, 224).astype(np.int16)
        want = np.asarray(F.resized_crop(pil, *box, [224, 224], InterpolationMode.BICUBIC)).astype(np.int16)
        diffs.append(np.abs(got - want))
    d = np.stack(diffs)
    per_crop = d.mean(axis=(1, 2, 3))
    assert d.mean() < bound and per_crop.max() < 2 * bound, per_crop
    assert np.percentile(d, 99) <= p99


def test_fast_resize_paths_against_pil():
    """Each of fast_resize's branches (enlarge: bicubic; shrink < 2x: bilinear; >= 2x:
    integer area steps first) stays close to PIL's antialiased bicubic on a photo, and a
    flat image stays flat (weights sum to 1 on every path)."""
    a = photo(900, 1200)
    for h, w in ((150, 180), (300, 260), (500, 700), (900, 1200)):
        got, want = augment.fast_resize(a[:h, :w], 224).astype(np.int16), pil_bicubic(a[:h, :w], 224)
        assert got.shape == (224, 224, 3) and np.abs(got - want).mean() < augment.FAST_RESIZE_BOUND_LARGE, (h, w)
        flat = np.full((h, w, 3), 77, np.uint8)
        np.testing.assert_array_equal(augment.fast_resize(flat, 224), 77)


def test_dct_scaled_crops_are_close_to_the_full_decode():
    big = jpeg(photo(750, 1000))
    decoded = images.decode(big)
    rng, diffs, scaled = np.random.default_rng(0), [], 0
    for _ in range(30):
        box = augment.crop_box(rng, 750, 1000)
        scaled += augment.dct_factor(box[2], box[3], 112) > 1
        got = augment.decode_jpeg_crop(big, 750, 1000, box, 112).astype(np.int16)
        want = augment.resized_crop(decoded, box, 112).astype(np.int16)  # PIL: torchvision's pixels
        diffs.append(np.abs(got - want).mean())
    assert scaled >= 8  # 112 px crops of >= 448 px decode at 1/2
    assert np.mean(diffs) < augment.FAST_RESIZE_BOUND_LARGE and max(diffs) < 2 * augment.FAST_RESIZE_BOUND_LARGE, diffs


def test_dct_factor():
    assert augment.dct_factor(895, 2000, 224) == 1 and augment.dct_factor(896, 896, 224) == 2
    assert augment.dct_factor(1800, 4000, 224) == 4 and augment.dct_factor(3584, 3584, 224) == 8


def test_other_formats_cmyk_and_exif_rotation_take_pils_path():
    a = photo(60, 80)
    png = io.BytesIO()
    Image.fromarray(a).save(png, "PNG")
    cmyk = io.BytesIO()
    Image.fromarray(a).convert("CMYK").save(cmyk, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    rotated = jpeg(a, exif=exif.tobytes())
    upright = Image.Exif()
    upright[0x0112] = 1
    for data, fast in ((png.getvalue(), False), (cmyk.getvalue(), False), (rotated, False),
                       (jpeg(a, exif=upright.tobytes()), True), (jpeg(a[..., 0]), True)):  # grayscale JPEG
        assert (augment.jpeg_size(data) is not None) == fast
        decoded = images.decode(data)
        want = fast_crop(decoded, 32, 1) if fast else augment.train_crop_uint8(decoded, 32, np.random.default_rng(1))
        got = augment.train_crop_uint8(data, 32, np.random.default_rng(1), decode=images.decode)
        np.testing.assert_array_equal(got, want)
    assert images.decode(rotated).shape[:2] == (80, 60)  # EXIF rotation is applied


def test_truncated_jpeg_raises_through_pil():
    data = jpeg(photo(100, 120))[:1500]
    assert augment.jpeg_size(data) == (100, 120)
    with pytest.raises(OSError, match="truncated"):
        augment.train_crop_uint8(data, 32, np.random.default_rng(0), decode=images.decode)


def test_crop_box_statistics_match_torchvision():
    """crop_box against torchvision's RandomResizedCrop.get_params on a 375x500 image: the
    area fraction, log aspect and position agree within 4 standard errors (4000 draws)."""
    torch = pytest.importorskip("torch")
    from torchvision.transforms import RandomResizedCrop

    n, (H, W) = 4000, (375, 500)
    torch.manual_seed(0)
    img = torch.zeros(3, H, W)
    tv = np.array([RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], np.float64)
    rng = np.random.default_rng(0)
    ours = np.array([augment.crop_box(rng, H, W) for _ in range(n)], np.float64)

    def stats(b):  # top, left, h, w -> area fraction, log aspect, centre y, centre x
        return np.stack([b[:, 2] * b[:, 3] / (H * W), np.log(b[:, 3] / b[:, 2]),
                         (b[:, 0] + b[:, 2] / 2) / H, (b[:, 1] + b[:, 3] / 2) / W], 1)

    a, b = stats(ours), stats(tv)
    se = np.sqrt(a.var(0) / n + b.var(0) / n)
    assert (np.abs(a.mean(0) - b.mean(0)) < 4 * se).all(), (a.mean(0), b.mean(0), se)
    for q in (0.1, 0.5, 0.9):  # the shape of the distribution too, not only its mean
        assert np.abs(np.quantile(a, q, axis=0) - np.quantile(b, q, axis=0)).max() < 0.03
    assert math.isclose((a[:, 0] > 0.999).mean(), (b[:, 0] > 0.999).mean(), abs_tol=0.01)  # center-crop fallbacks


def test_device_normalisation_is_bit_equal_to_the_host():
    x = np.stack([np.arange(256, dtype=np.uint8)] * 3, -1).reshape(16, 16, 3)
    host = augment.normalize(x)
    np.testing.assert_array_equal(np.asarray(normalize_images(jnp.asarray(x))), host)
    mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
    np.testing.assert_allclose(host, (x / 255.0 - mean) / std, atol=4e-7)  # the textbook formula


def test_prefetcher_moves_uint8_batches_and_hands_out_the_host_floats(data_config):
    from mimjax.data import make_pretrain_iterator, prefetch_to_device

    make = lambda: make_pretrain_iterator(data_config(source="embedded"), img_size=16, global_batch_size=4,
                                          seed=3)
    host = [next(make())]
    it = make()
    raw = next(make_pretrain_iterator(data_config(source="embedded"), img_size=16, global_batch_size=4, seed=3))
    pf = prefetch_to_device(it, size=1)
    assert it.host_uint8 and raw["image"].dtype == np.float32
    got = next(pf)
    assert got["image"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got["image"]), host[0]["image"])
