"""RandAugment (mimjax/data/randaugment.py) against timm's (timm.data.auto_augment): each
op on fixed images at fixed magnitudes and signs (pixel for pixel: the same PIL calls with
the same float arguments), the whole transform on fixed draws, the op / magnitude / sign
distribution of the draws, the spec parser, the fine-tune recipe and the pipeline."""
import random
import re

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from mimjax.data import augment, pipeline
from mimjax.data import randaugment as ra

auto_augment = pytest.importorskip("timm.data.auto_augment")
MAE_SPEC = "rand-m9-mstd0.5-inc1"


def timm_mae_randaugment():
    """The RandAugment inside MAE's fine-tuning transform (main_finetune.py build_transform)."""
    from timm.data import create_transform

    t = create_transform(224, is_training=True, auto_augment=MAE_SPEC, interpolation="bicubic", re_prob=0.25,
                         re_mode="pixel", re_count=1)
    names = [type(x).__name__ for x in t.transforms]
    assert names[:4] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment", "MaybeToTensor"]
    return t.transforms[2]


def images():
    """uint8 [H, W, 3] test images, not square (translations use the right side): a photo, a
    low-contrast copy of it (autocontrast, equalize) and uniform noise."""
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((72, 56), Image.BICUBIC))
    low = (photo // 4 + 90).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return {"photo": photo, "low_contrast": low, "noise": noise}


def timm_op(name, image, magnitude, sign, monkeypatch, hparams):
    """timm's AugmentOp `name` applied always, at exactly `magnitude`, its random sign fixed."""
    monkeypatch.setattr(auto_augment, "_randomly_negate", lambda v: -v if sign < 0 else v)
    op = auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams={**hparams, "magnitude_std": 0})
    return np.asarray(op(Image.fromarray(image)))


ALL_OPS = sorted(set(ra.OPS) | set(ra.OPS_INCREASING))
MAGNITUDES = (-0.3, 0, 1, 2.5, 5, 7.49, 9, 9.37, 10, 10.7)  # outside [0, 10]: clipped as timm does


@pytest.mark.parametrize("name", ALL_OPS)
def test_each_op_matches_timm_pixel_for_pixel(name, monkeypatch):
    hparams = timm_mae_randaugment().ops[0].hparams  # MAE's: bicubic, fill = ImageNet mean
    for label, image in images().items():
        for magnitude in MAGNITUDES:
            for sign in (1, -1):
                ours = ra.apply_op(image, name, magnitude, sign)
                assert ours.dtype == np.uint8 and ours.shape == image.shape
                try:
                    ref = timm_op(name, image, magnitude, sign, monkeypatch, hparams)
                except ValueError as e:  # Pillow 13 refuses ImageOps.posterize(img, 0)
                    bits = auto_augment.LEVEL_TO_ARG[name](min(max(magnitude, 0), 10), {})
                    assert name.startswith("Posterize") and bits == (0,) and "bits" in str(e)
                    assert not ours.any(), "0 bits kept: black, what older Pillow computed"
                    continue
                np.testing.assert_array_equal(ours, ref, err_msg=f"{name} on {label} at m={magnitude}, sign={sign}")


def test_op_arguments_span_timms_ranges():
    """Independent of timm: the documented argument ranges at magnitude 10."""
    assert ra.op_args("Rotate", 10, -1) == (-30.0,)
    assert ra.op_args("ShearX", 10) == pytest.approx((0.3,))
    assert ra.op_args("TranslateYRel", 10, -1) == pytest.approx((-0.45,))
    assert ra.op_args("ColorIncreasing", 10, -1) == pytest.approx((0.1,))
    assert ra.op_args("ColorIncreasing", 10, 1) == pytest.approx((1.9,))
    assert ra.op_args("Color", 0) == pytest.approx((0.1,))
    assert ra.op_args("PosterizeIncreasing", 0) == (4,) and ra.op_args("PosterizeIncreasing", 10) == (0,)
    assert ra.op_args("SolarizeIncreasing", 0) == (256,) and ra.op_args("SolarizeIncreasing", 10) == (0,)
    assert ra.op_args("SolarizeAdd", 10) == (110,)
    x = images()["noise"]
    np.testing.assert_array_equal(ra.apply_op(x, "PosterizeIncreasing", 5), x & 0b11000000)  # 2 bits
    np.testing.assert_array_equal(ra.apply_op(x, "Invert", 5), 255 - x)


def test_mae_spec_is_timms_op_set_magnitude_and_fill():
    timm_ra, ours = timm_mae_randaugment(), ra.RandAugment(MAE_SPEC)
    assert [op.name for op in timm_ra.ops] == ours.ops
    assert timm_ra.num_layers == ours.spec.num_ops == 2 and timm_ra.choice_weights is None
    for op in timm_ra.ops:
        assert (op.magnitude, op.prob, op.magnitude_std) == (9, 0.5, 0.5) == (
            ours.spec.magnitude, ours.spec.prob, ours.spec.magnitude_std)
        assert op.kwargs == {"fillcolor": ra.FILL, "resample": Image.BICUBIC}
    assert ra.FILL == (124, 116, 104)


@pytest.mark.parametrize("spec", [MAE_SPEC, "rand-m7-n3-p0.3", "rand-n1-inc0", "rand-m5-mstd101", "rand"])
def test_spec_parses_as_timm(spec):
    timm_ra = auto_augment.rand_augment_transform(spec, {"img_mean": ra.FILL})
    ours = ra.RandAugment(spec)
    assert [op.name for op in timm_ra.ops] == ours.ops
    op = timm_ra.ops[0]
    assert (timm_ra.num_layers, op.magnitude, op.prob, op.magnitude_std) == (
        ours.spec.num_ops, ours.spec.magnitude, ours.spec.prob, ours.spec.magnitude_std)


@pytest.mark.parametrize("spec, words", [
    ("rand-m9-x", "unknown section 'x'"), ("rnd-m9", "starts with 'rnd'"), ("rand-m11", "outside [0, 10]"),
    ("rand-m9.5", "m takes an integer"), ("rand-m9-m8", "given twice"), ("rand-inc2", "0 or 1"),
    ("rand-p1.5", "probability"), ("rand-n0", "at least one"), ("rand-mmax12", "unknown section"),
    ("rand-tweights", "unknown section")])
def test_bad_specs_are_one_line_errors(spec, words):
    with pytest.raises(ValueError) as e:
        ra.parse(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(repr(spec)) and words in msg and "'rand-m9-mstd0.5-inc1'" in msg
    assert ra.parse("") is None


def test_whole_transform_matches_timm_on_fixed_draws(monkeypatch):
    """timm's RandAugment with its draws scripted (op choice, apply-or-skip, magnitude, sign)
    against `ra.apply` of the plan those draws mean."""
    timm_ra = timm_mae_randaugment()
    by_name = {op.name: op for op in timm_ra.ops}
    g = np.random.default_rng(1)
    for trial in range(60):
        image = images()[("photo", "low_contrast", "noise")[trial % 3]]
        names = list(g.choice(list(by_name), 2))
        u, magnitude, sign = g.uniform(size=2), g.normal(9, 0.5, 2), np.where(g.uniform(size=2) < 0.5, -1, 1)
        if trial % 10 == 0:
            magnitude[0] = 10.4  # clipped
        if "PosterizeIncreasing" in names:  # timm raises at 0 bits (test above): keep below magnitude 10
            magnitude = np.minimum(magnitude, 9.9)
        draws, current = iter(zip(u, magnitude, sign)), {}

        def prob_draw():  # AugmentOp's first draw: skip when random() > prob
            current["u"], current["magnitude"], current["sign"] = next(draws)
            return current["u"]

        monkeypatch.setattr(np.random, "choice", lambda ops, n, replace, p: [by_name[x] for x in names])
        monkeypatch.setattr(random, "random", prob_draw)
        monkeypatch.setattr(random, "gauss", lambda mu, sigma: current["magnitude"])
        monkeypatch.setattr(auto_augment, "_randomly_negate", lambda v: -v if current["sign"] < 0 else v)
        ref = np.asarray(timm_ra(Image.fromarray(image)))
        monkeypatch.undo()
        plan = [(n, m, s) for n, k, m, s in zip(names, u, magnitude, sign) if k <= 0.5]
        np.testing.assert_array_equal(ra.apply(image, plan), ref, err_msg=f"trial {trial}: {plan}")


def draws_of_timm(n_images: int):
    """[(name, args)] per image from timm's MAE RandAugment, its ops replaced by recorders."""
    timm_ra = timm_mae_randaugment()
    calls = []
    for op in timm_ra.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **kw: calls.append((_name, args)) or img
    random.seed(0)
    np.random.seed(0)
    img, out = Image.new("RGB", (4, 4)), []
    for _ in range(n_images):
        calls.clear()
        timm_ra(img)
        out.append(list(calls))
    return out


def test_draw_distribution_matches_timm():
    """Ops applied per image, op frequencies and each op's argument distribution: timm's
    (Python's `random`) against ours (a numpy Generator), 12000 images each; a two-sample
    test per quantity must not reject at p = 0.001."""
    n = 12000
    theirs = draws_of_timm(n)
    aug, rng = ra.RandAugment(MAE_SPEC), np.random.default_rng(0)
    ours = [[(name, ra.op_args(name, m, s)) for name, m, s in aug.draw(rng)] for _ in range(n)]
    counts = [np.bincount([len(x) for x in d], minlength=3) for d in (theirs, ours)]
    assert stats.chi2_contingency(counts).pvalue > 1e-3, counts
    assert abs(counts[1][1] / n - 0.5) < 0.02  # Binomial(2, 0.5): 1/4, 1/2, 1/4
    names = list(aug.ops)
    freq = [[sum(c[0] == name for x in d for c in x) for name in names] for d in (theirs, ours)]
    assert stats.chi2_contingency(freq).pvalue > 1e-3, freq
    for name in names:
        a, b = ([c[1] for x in d for c in x if c[0] == name] for d in (theirs, ours))
        if not a[0]:
            continue  # no arguments (AutoContrast, Equalize, Invert)
        a, b = np.asarray(a, float)[:, 0], np.asarray(b, float)[:, 0]
        values = np.union1d(a, b)
        if len(values) <= 8:  # discrete (posterize bits, solarize thresholds): a contingency table
            table = [[np.sum(x == v) for v in values] for x in (a, b)]
            assert stats.chi2_contingency(table).pvalue > 1e-3, (name, values, table)
        else:
            assert stats.ks_2samp(a, b).pvalue > 1e-3, name
        assert np.mean(a < 0) == pytest.approx(np.mean(b < 0), abs=0.06), name  # signs


def test_draws_are_reproducible_from_the_generator():
    aug = ra.RandAugment(MAE_SPEC)
    x = images()["photo"]
    a, b = (aug(x, np.random.default_rng((7, 3))) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(aug(x, np.random.default_rng((7, i))), x) for i in range(5))


# --- In the pipeline and the recipe --------------------------------------------------------
def test_pipeline_applies_it_after_crop_and_flip_before_normalising():
    """Image p of a training batch = RandAugment(train crop) with the image's own generator
    (crop box, flip, then the ops); normalisation comes after, on the augmented uint8."""
    photo = images()["photo"]
    records = [{"image": np.roll(photo, 7 * i, axis=1), "label": i} for i in range(8)]
    t = pipeline._Transform(32, True, 5, (0.08, 1.0), randaugment=MAE_SPEC)
    plain = pipeline._Transform(32, True, 5, (0.08, 1.0))
    changed = 0
    for position, record in enumerate(records):
        rng = np.random.default_rng((5, position))
        crop = augment.train_crop_uint8(record["image"], 32, rng, (0.08, 1.0))
        expected = ra.apply(crop, ra.RandAugment(MAE_SPEC).draw(rng))
        got = t((position, record))["image"]
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(plain((position, record))["image"], crop)  # off: the crop as before
        changed += not np.array_equal(got, crop)
    assert changed >= 3
    assert pipeline._Transform(32, False, 5, randaugment=MAE_SPEC).randaugment is None  # never on test images

    def batch(uint8):
        it = pipeline.make_pretrain_iterator(None, img_size=32, global_batch_size=4, seed=5, source=records,
                                             crop_scale=(0.08, 1.0), randaugment=MAE_SPEC, num_threads=1)
        it.host_uint8 = uint8
        return next(it)["image"]

    np.testing.assert_array_equal(batch(False), augment.normalize(batch(True)))


def test_finetune_recipe_turns_it_on_and_validate_names_a_bad_spec(tmp_path):
    from mimjax.configs import finetune, linprobe
    from mimjax.eval.config import ConfigError, validate

    assert finetune.get_config().data.randaugment == MAE_SPEC
    assert finetune.get_config("vit_large_patch16,runlocal").data.randaugment == MAE_SPEC
    assert linprobe.get_config().data.randaugment == ""  # MAE's linear probe: crop and flip only
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    c = finetune.get_config("runlocal")
    c.init = str(tmp_path)
    validate(c)
    c.data.randaugment = "rand-m9-mstd0.5-inc"
    with pytest.raises(ConfigError, match=re.escape("config.data.randaugment='rand-m9-mstd0.5-inc': section "
                                                    "'inc': inc takes an integer; expected a RandAugment spec")):
        validate(c)
