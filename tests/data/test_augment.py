import math

import numpy as np
import pytest
from PIL import Image

from mimjax.data import augment


class ScriptedRng:
    """Stands in for np.random.Generator: uniform() returns `uniforms` in turn (as a
    fraction of [low, high)), integers() returns the largest allowed value."""

    def __init__(self, fractions):
        self.fractions = list(fractions)

    def uniform(self, low=0.0, high=1.0):
        return low + self.fractions.pop(0) * (high - low)

    def integers(self, low, high):
        return high - 1


def test_crop_box_against_hand_computation():
    # area fraction 0.2 + 0.5 * 0.8 = 0.6, log aspect halfway -> aspect 1: a square of
    # side round(sqrt(0.6 * 300 * 400)) = 268, placed at the far corner.
    top, left, h, w = augment.crop_box(ScriptedRng([0.5, 0.5]), 300, 400)
    side = round(math.sqrt(0.6 * 300 * 400))
    assert (h, w) == (side, side) and (top, left) == (300 - side, 400 - side)
    # Full area at aspect 4/3 does not fit a 400x300 image (w = 400 > 300): drawn again.
    top, left, h, w = augment.crop_box(ScriptedRng([1.0, 1.0, 0.0, 0.0]), 400, 300)
    h_want, w_want = round(math.sqrt(0.2 * 120000 * 4 / 3)), round(math.sqrt(0.2 * 120000 * 3 / 4))
    assert (h, w) == (h_want, w_want) and (top, left) == (400 - h_want, 300 - w_want)
    # 10 misses -> center crop: whole image inside the ratio range, clamped outside it.
    assert augment.crop_box(ScriptedRng([1.0, 0.0] * 10), 300, 400) == (0, 0, 300, 400)
    assert augment.crop_box(ScriptedRng([1.0, 1.0] * 10), 10, 1000) == (0, (1000 - 13) // 2, 10, 13)
    assert augment.crop_box(ScriptedRng([1.0, 0.0] * 10), 1000, 10) == ((1000 - 13) // 2, 0, 13, 10)


def test_crop_box_bounds_over_many_draws():
    rng, (H, W) = np.random.default_rng(0), (300, 400)
    for _ in range(2000):
        top, left, h, w = augment.crop_box(rng, H, W)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        # scale (0.2, 1) and ratio (3/4, 4/3) up to rounding h and w by at most 1/2
        assert (math.sqrt(0.2 * H * W * 3 / 4) - 0.5) * (math.sqrt(0.2 * H * W * 4 / 3) - 0.5) <= h * w <= H * W
        assert (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / (h - 0.5) >= 3 / 4


def test_random_resized_crop_is_crop_then_bicubic_resize():
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), np.uint8)
    out = augment.random_resized_crop(image, 24, np.random.default_rng(7))
    top, left, h, w = augment.crop_box(np.random.default_rng(7), 50, 70)
    want = Image.fromarray(image).crop((left, top, left + w, top + h)).resize((24, 24), Image.BICUBIC)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(want))


def test_matches_torchvision_given_the_same_box():
    pytest.importorskip("torchvision")
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor
    from torchvision.transforms import InterpolationMode, functional as F

    image = np.random.default_rng(2).integers(0, 256, (45, 80, 3), np.uint8)
    box = augment.crop_box(np.random.default_rng(3), 45, 80)
    tv = F.resized_crop(Image.fromarray(image), *box, [32, 32], InterpolationMode.BICUBIC)
    np.testing.assert_array_equal(augment.random_resized_crop(image, 32, np.random.default_rng(3)), np.asarray(tv))
    for shape in [(45, 80, 3), (80, 45, 3), (40, 40, 3)]:
        img = np.random.default_rng(4).integers(0, 256, shape, np.uint8)
        ref = Compose([Resize(int(32 / 0.875), InterpolationMode.BICUBIC), CenterCrop(32), ToTensor(),
                       Normalize(augment.IMAGENET_MEAN, augment.IMAGENET_STD)])(Image.fromarray(img))
        np.testing.assert_allclose(augment.eval_transform(img, 32), ref.numpy().transpose(1, 2, 0), atol=1e-5)


def test_flip_is_deterministic_and_half_the_time():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    a = augment.train_transform(image, 16, np.random.default_rng(5))
    np.testing.assert_array_equal(a, augment.train_transform(image, 16, np.random.default_rng(5)))
    # scale (1, 1) on a square image: the crop is always the whole image, only the flip varies
    plain = augment.normalize(np.asarray(Image.fromarray(image).resize((16, 16), Image.BICUBIC)))
    flipped = [not np.array_equal(out, plain) for out in
               (augment.train_transform(image, 16, np.random.default_rng(s), scale=(1.0, 1.0)) for s in range(200))]
    for s in range(5):
        out = augment.train_transform(image, 16, np.random.default_rng(s), scale=(1.0, 1.0))
        assert np.array_equal(out, plain) or np.array_equal(out, plain[:, ::-1])
    assert 70 < sum(flipped) < 130


def test_normalisation_values_and_denormalize():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0] = 255
    img[1, 0] = (124, 116, 104)
    x = augment.normalize(img)
    mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
    assert x.dtype == np.float32 and x.shape == (2, 3, 3)
    np.testing.assert_allclose(x[0, 0], (1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(x[1, 1], -mean / std, rtol=1e-6)
    np.testing.assert_allclose(x[1, 0], (np.array([124, 116, 104]) / 255 - mean) / std, atol=1e-6)
    np.testing.assert_array_equal(augment.denormalize(x), img)
    assert augment.denormalize(np.full((1, 3), 100.0)).tolist() == [[255, 255, 255]]  # clipped


@pytest.mark.parametrize("shape", [(300, 200, 3), (200, 300, 3), (5, 5, 3)])
def test_transform_shapes_and_range(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    lo, hi = -np.array(augment.IMAGENET_MEAN) / augment.IMAGENET_STD, (1 - np.array(augment.IMAGENET_MEAN)) / augment.IMAGENET_STD
    for x in (augment.train_transform(image, 24, np.random.default_rng(0)), augment.eval_transform(image, 24)):
        assert x.shape == (24, 24, 3) and x.dtype == np.float32
        assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()
