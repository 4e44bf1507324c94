"""RandAugment (Cubuk et al. 2020) as timm writes it, on uint8 crops on the host.

MAE's fine-tuning (main_finetune.py) builds its training transform with timm's
`create_transform(is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
interpolation="bicubic", re_prob=0.25, ...)`: RandomResizedCrop, flip, then this, then
ToTensor / Normalize, then random erasing. The pipeline applies it at the same place
(`pipeline._Transform`, after `augment.train_crop_uint8`, before normalisation; random
erasing and mixup/cutmix follow on the device, mimjax/eval/finetune.py).

Per image, `num_ops` ops are chosen uniformly with replacement from the 15 of timm's set
(`inc1`: the ones whose severity increases with the magnitude); each is applied with
probability `prob`, at a magnitude ~ N(m, mstd) clipped to [0, 10] (mstd > 100: uniform
in [0, m]); rotations, shears, translations and the increasing enhancements take a random
sign. Geometric ops resample bicubic and fill with the ImageNet mean as uint8,
(124, 116, 104). The ops are PIL's, with timm's arguments, so an op gives timm's pixels
exactly (tests/data/test_randaugment.py); the draws come from a numpy Generator, so an
image's augmentation is reproducible from (seed, position) instead of Python's global
`random`.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mimjax.data.augment import IMAGENET_MEAN

LEVEL_DENOM = 10.0  # magnitude 10 = an op's strongest setting (timm's _LEVEL_DENOM)
FILL = tuple(min(255, round(255 * x)) for x in IMAGENET_MEAN)  # (124, 116, 104), timm's img_mean
EXPECTED = ("a RandAugment spec as timm writes it: 'rand' and '-'-separated sections m<magnitude 0-10>, "
            "n<ops per image>, mstd<magnitude std>, inc<0|1>, p<op probability> (e.g. 'rand-m9-mstd0.5-inc1'), "
            "or '' (off)")


@dataclasses.dataclass(frozen=True)
class Spec:
    magnitude: float = LEVEL_DENOM  # timm's defaults for sections left out
    num_ops: int = 2
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    increasing: bool = False
    prob: float = 0.5


_SECTIONS = {"m": int, "n": int, "mstd": float, "inc": int, "p": float}  # timm's numeric sections


def parse(spec: str) -> Spec | None:
    """A timm RandAugment string ("rand-m9-mstd0.5-inc1") -> Spec; "" -> None (off).
    Stricter than timm: an unknown, repeated or out-of-range section is a ValueError
    (one line naming the spec and what is expected), never ignored."""
    if not spec:
        return None

    def bad(why):
        raise ValueError(f"{spec!r}: {why}; expected {EXPECTED}")

    head, *sections = spec.split("-")
    if head != "rand":
        bad(f"starts with {head!r}, not 'rand'")
    values = {}
    for section in sections:
        key, value = re.fullmatch(r"([a-z]*)(.*)", section).groups()  # as timm: the letters, then a number
        if key not in _SECTIONS:
            bad(f"unknown section {section!r}")
        if key in values:
            bad(f"section {key!r} given twice")
        try:
            values[key] = _SECTIONS[key](value)
        except ValueError:
            bad(f"section {section!r}: {key} takes {'an integer' if _SECTIONS[key] is int else 'a number'}")
    s = Spec(**{"magnitude": values.get("m", LEVEL_DENOM), "num_ops": values.get("n", 2),
                "magnitude_std": values.get("mstd", 0.0), "increasing": bool(values.get("inc", 0)),
                "prob": values.get("p", 0.5)})
    if not 0 <= s.magnitude <= LEVEL_DENOM:
        bad(f"magnitude {values['m']} is outside [0, 10] (timm clips magnitudes at 10)")
    if s.num_ops < 1:
        bad(f"n{s.num_ops}: at least one op per image")
    if not s.magnitude_std >= 0:
        bad(f"mstd{s.magnitude_std}: a standard deviation >= 0")
    if values.get("inc", 0) not in (0, 1):
        bad(f"inc{values['inc']}: 0 or 1")
    if not 0 <= s.prob <= 1:
        bad(f"p{s.prob}: a probability in [0, 1]")
    if s.magnitude_std > 100:  # timm: uniform sampling in [0, m]
        s = dataclasses.replace(s, magnitude_std=float("inf"))
    return s


# --- The ops: PIL image and arguments -> PIL image (timm's op functions) ----------------
def _affine(img, matrix, fill):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)


def _solarize_add(img, add):  # + add below 128, saturating at 255
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * 3)


def _posterize(img, bits):
    """Keeps the `bits` high bits: ImageOps.posterize for 1-8 bits; 0 bits (PosterizeIncreasing
    at magnitude 10) gives black, as PIL did before Pillow refused 0 (timm then raises)."""
    mask = ~(2 ** (8 - bits) - 1) & 255 if bits < 8 else 255
    return img.point([i & mask for i in range(256)] * 3)


def _enhance(kind):
    return lambda img, factor, fill: kind(img).enhance(factor)


_APPLY = {  # name -> (PIL image, *args, fill) -> PIL image
    "AutoContrast": lambda img, fill: ImageOps.autocontrast(img),
    "Equalize": lambda img, fill: ImageOps.equalize(img),
    "Invert": lambda img, fill: ImageOps.invert(img),
    "Rotate": lambda img, degrees, fill: img.rotate(degrees, resample=Image.BICUBIC, fillcolor=fill),
    "Posterize": lambda img, bits, fill: _posterize(img, bits),
    "Solarize": lambda img, threshold, fill: ImageOps.solarize(img, threshold),
    "SolarizeAdd": lambda img, add, fill: _solarize_add(img, add),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, factor, fill: _affine(img, (1, factor, 0, 0, 1, 0), fill),
    "ShearY": lambda img, factor, fill: _affine(img, (1, 0, 0, factor, 1, 0), fill),
    "TranslateXRel": lambda img, pct, fill: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill),
    "TranslateYRel": lambda img, pct, fill: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill),
}

# --- Magnitude (0-10) and sign (+-1) -> the op's arguments (timm's level_to_arg) ----------
# Written in timm's order of operations, so the floats (and pixels) are the same.
_LEVEL = {
    "none": lambda m, sign: (),
    "rotate": lambda m, sign: (sign * ((m / LEVEL_DENOM) * 30.0),),  # [-30, 30] degrees
    "shear": lambda m, sign: (sign * ((m / LEVEL_DENOM) * 0.3),),  # [-0.3, 0.3]
    "translate": lambda m, sign: (sign * ((m / LEVEL_DENOM) * 0.45),),  # [-0.45, 0.45] of the side
    "enhance": lambda m, sign: ((m / LEVEL_DENOM) * 1.8 + 0.1,),  # [0.1, 1.9]
    "enhance_inc": lambda m, sign: (max(0.1, 1.0 + sign * ((m / LEVEL_DENOM) * 0.9)),),
    "posterize": lambda m, sign: (int((m / LEVEL_DENOM) * 4),),  # bits kept: 0..4
    "posterize_inc": lambda m, sign: (4 - int((m / LEVEL_DENOM) * 4),),  # 4..0
    "solarize": lambda m, sign: (min(256, int((m / LEVEL_DENOM) * 256)),),  # threshold
    "solarize_inc": lambda m, sign: (256 - min(256, int((m / LEVEL_DENOM) * 256)),),
    "solarize_add": lambda m, sign: (min(128, int((m / LEVEL_DENOM) * 110)),),  # [0, 110]
}

# timm's op lists (_RAND_TRANSFORMS, _RAND_INCREASING_TRANSFORMS): name -> level; an
# "...Increasing" op is its base op (_APPLY) with the increasing level.
OPS = {"AutoContrast": "none", "Equalize": "none", "Invert": "none", "Rotate": "rotate",
       "Posterize": "posterize", "Solarize": "solarize", "SolarizeAdd": "solarize_add", "Color": "enhance",
       "Contrast": "enhance", "Brightness": "enhance", "Sharpness": "enhance", "ShearX": "shear",
       "ShearY": "shear", "TranslateXRel": "translate", "TranslateYRel": "translate"}
OPS_INCREASING = {name + "Increasing" if level in ("posterize", "solarize", "enhance") else name:
                  level + "_inc" if level in ("posterize", "solarize", "enhance") else level
                  for name, level in OPS.items()}
_LEVEL_OF = {**OPS, **OPS_INCREASING}


def op_args(name: str, magnitude: float, sign: int = 1) -> tuple:
    """The arguments timm's op `name` gets at `magnitude` (clipped to [0, 10]) and sign."""
    return _LEVEL[_LEVEL_OF[name]](min(max(magnitude, 0.0), LEVEL_DENOM), sign)


def apply_op(image: np.ndarray, name: str, magnitude: float, sign: int = 1, fill=FILL) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: timm's op `name` (e.g. "Rotate",
    "SolarizeIncreasing") at `magnitude` in [0, 10]; sign -1 negates a signed op."""
    return apply(image, [(name, magnitude, sign)], fill)


def apply(image: np.ndarray, plan, fill=FILL) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: the ops of `plan` [(name, magnitude, sign)] in order
    (`image` itself for an empty plan: a quarter of the images at p = 0.5, n = 2)."""
    if not plan:
        return image
    img = Image.fromarray(np.ascontiguousarray(image))
    for name, magnitude, sign in plan:
        img = _APPLY[name.removesuffix("Increasing")](img, *op_args(name, magnitude, sign), fill)
    return np.asarray(img)


class RandAugment:
    """`RandAugment(spec)(image uint8 [H, W, 3], rng) -> uint8 [H, W, 3]`; `spec` is a
    timm string ("rand-m9-mstd0.5-inc1"; `parse`). Draws 4 x num_ops numbers from `rng`
    for every image, applied or not."""

    def __init__(self, spec: str, fill=FILL):
        self.spec, self.fill = parse(spec), tuple(fill)
        if self.spec is None:
            raise ValueError(f"{spec!r}: RandAugment needs a spec; expected {EXPECTED}")
        self.ops = list(OPS_INCREASING if self.spec.increasing else OPS)

    def draw(self, rng: np.random.Generator) -> list[tuple[str, float, int]]:
        """The plan of one image: [(name, magnitude, sign)] of the ops applied (0 to
        num_ops; magnitudes as drawn, `op_args` clips them to [0, 10] as timm does)."""
        s, n = self.spec, self.spec.num_ops
        choice = rng.integers(0, len(self.ops), n)  # with replacement, as timm's np.random.choice
        keep = rng.uniform(size=n) <= s.prob  # timm skips when random() > prob
        if s.magnitude_std == float("inf"):
            magnitude = rng.uniform(0.0, s.magnitude, n)
        elif s.magnitude_std > 0:
            magnitude = rng.normal(s.magnitude, s.magnitude_std, n)
        else:
            magnitude = np.full(n, float(s.magnitude))
        sign = np.where(rng.uniform(size=n) > 0.5, -1, 1)  # timm's _randomly_negate
        return [(self.ops[c], float(m), int(g)) for c, k, m, g in zip(choice, keep, magnitude, sign) if k]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return apply(image, self.draw(rng), self.fill)
