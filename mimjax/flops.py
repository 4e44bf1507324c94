"""Model FLOPs per image, computed from the architecture, and the device peaks for MFU.

Counting rules (matmuls only; norms, softmax, GELU and the optimizer are not counted):
- a Dense layer on T tokens, D_in -> D_out: 2 * T * D_in * D_out (fwd = 2 x MACs);
- a transformer block on T tokens of width D, MLP ratio r: (8 + 4r) T D^2 (qkv, out,
  MLP) + 4 T^2 D (q.k^T and attn.v), i.e. 24 T D^2 + 4 T^2 D for r = 4;
- a train step is 3 x fwd for the trained parts (student encoder on the 1 + K visible
  tokens, decoder, GPA head; the patch embedding runs on all N patches, as in MAE), and
  1 x fwd for the frozen teacher (patch embedding + blocks 0..block-1 + q, k of all heads of
  `block` + one head's scores k . sum_i q_i, O(T hd); or, with `teacher_full`, the whole encoder).
`xla_flops` reads XLA's own count of a compiled program, which also counts elementwise ops
(so it is a few percent higher) and counts a `lax.scan` body once per XLA version
(model.scan=true then reads low).

    python -c "from mimjax.flops import *; print(step_flops(Arch.from_name('vit_base_patch16'), 'gpa_feature'))"
"""
from __future__ import annotations

import dataclasses

from mimjax.models.vit import VIT_VARIANTS

def peak_flops(device_kind: str) -> float | None:
    """The device's dense bf16 peak (FLOP/s) from the one chip table
    (`mimjax.parallel.targets.CHIPS`), or None for an unknown device (MFU omitted)."""
    from mimjax.parallel import targets

    chip = targets.chip_of_device_kind(device_kind)
    return None if chip is None else chip.peak_bf16


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the FLOP count needs: encoder, decoder, teacher, image and mask."""

    img_size: int = 224
    patch: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    decoder_width: int = 512
    decoder_depth: int = 8
    mask_ratio: float = 0.75
    teacher_block: int = 9

    @classmethod
    def from_name(cls, name: str, **kw):
        patch, width, depth, heads = VIT_VARIANTS[name.removeprefix("mae_")]
        return cls(patch=patch, width=width, depth=depth, heads=heads, **kw)

    @classmethod
    def from_config(cls, c):
        """From a mimjax config (model, masking, teacher sections); the teacher is assumed to
        have the student's architecture (as the benchmark builds it)."""
        m = c.model
        patch, width, depth, heads = VIT_VARIANTS[m.name.removeprefix("mae_")]
        return cls(img_size=m.img_size, patch=m.patch_size or patch, width=m.width or width,
                   depth=m.depth or depth, heads=m.num_heads or heads, decoder_width=m.decoder_width,
                   decoder_depth=m.decoder_depth, mask_ratio=c.masking.mask_ratio, teacher_block=c.teacher.block)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2

    @property
    def num_visible(self) -> int:  # K = int(N (1 - ratio)), as MAE's len_keep
        return int(self.num_patches * (1 - self.mask_ratio))


def dense(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def block(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one pre-norm transformer block on `tokens` tokens of one image."""
    return (8 + 4 * mlp_ratio) * tokens * width ** 2 + 4.0 * tokens ** 2 * width


def patch_embed(a: Arch) -> float:
    return dense(a.num_patches, a.patch * a.patch * 3, a.width)


def encoder_fwd(a: Arch, tokens: int | None = None) -> float:
    """Patch embedding (all N patches) + `depth` blocks on `tokens` tokens (default 1 + N)."""
    t = 1 + a.num_patches if tokens is None else tokens
    return patch_embed(a) + a.depth * block(t, a.width, a.mlp_ratio)


def decoder_fwd(a: Arch, embed: bool = True) -> float:
    """Pixel decoder (or the GPA head, embed=False: it reuses the decoder's embedded input)."""
    t, pix = 1 + a.num_patches, a.patch * a.patch * 3
    f = a.decoder_depth * block(t, a.decoder_width, a.mlp_ratio) + dense(t, a.decoder_width, pix)
    return f + (dense(1 + a.num_visible, a.width, a.decoder_width) if embed else 0.0)


def teacher_fwd(a: Arch, full: bool = False) -> float:
    """Frozen teacher: up to block `teacher_block`'s q, k and one head's GPA scores from them
    (column sums of q.k^T as k . sum_i q_i: 2 T hd, no T x T product), or the full encoder
    (full=True, the naive way to get one block's attention)."""
    if full:
        return encoder_fwd(a)
    t = 1 + a.num_patches
    qk = 2 * dense(t, a.width, a.width) + 2.0 * t * (a.width // a.heads)
    return patch_embed(a) + a.teacher_block * block(t, a.width, a.mlp_ratio) + qk


def method_of(cfg) -> str:
    """The `step_flops` method of a pre-training config: mae | gpa_teacher | gpa_feature |
    gpa_feature_late | simmim | simmim_gpa | simmim_feature."""
    if cfg.model.arch == "simmim":
        return "simmim_feature" if cfg.model.gpa_head else "simmim_gpa" if cfg.masking.strategy != "random" else "simmim"
    if cfg.model.gpa_head:
        return "gpa_feature_late" if cfg.model.gpa_head_late_start else "gpa_feature"
    return "mae" if cfg.masking.strategy == "random" else "gpa_teacher"


def step_flops(a: Arch, method: str, teacher_full: bool = False) -> dict:
    """FLOPs per image of one train step, by part, for method mae | gpa_teacher | gpa_feature
    | gpa_feature_late (timed before 75% of training: the late head's blocks do not run) |
    simmim | simmim_gpa | simmim_feature (`method_of`).
    Keys: student_encoder, decoder, gpa_head, teacher (fwd+bwd where trained) and total."""
    if method.startswith("simmim"):  # the encoder sees all 1 + N tokens; linear pixel (and GPA) heads
        heads = dense(a.num_patches, a.width, a.patch * a.patch * 3 + (1 if method == "simmim_feature" else 0))
        parts = {"student_encoder": 3 * encoder_fwd(a), "decoder": 3 * heads, "gpa_head": 0.0,
                 "teacher": teacher_fwd(a, teacher_full) if method != "simmim" else 0.0}
        parts["total"] = sum(parts.values())
        return parts
    parts = {"student_encoder": 3 * encoder_fwd(a, 1 + a.num_visible), "decoder": 3 * decoder_fwd(a),
                 "gpa_head": 3 * decoder_fwd(a, embed=False) if method == "gpa_feature" else 0.0,
                 "teacher": teacher_fwd(a, teacher_full) if method != "mae" else 0.0}
    parts["total"] = sum(parts.values())
    return parts


def encoder_train_flops(a: Arch) -> float:
    """FLOPs per image of the encoder forward + backward on all 1 + N tokens."""
    return 3 * encoder_fwd(a)


def xla_memory(compiled) -> dict | None:
    """Per-device bytes of a compiled program from XLA's memory analysis: arguments,
    temporaries, outputs, aliased, code, and total (the donated state's outputs reuse its
    argument buffers, so aliased bytes count once); None where the backend has none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    out = dict(arguments=m.argument_size_in_bytes, temporaries=m.temp_size_in_bytes, outputs=m.output_size_in_bytes,
               aliased=m.alias_size_in_bytes, code=m.generated_code_size_in_bytes)
    out["total"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"] + out["code"]
    return out


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (`jitted.lower(...).compile()`), if it has one."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    return float(ca["flops"]) if ca and "flops" in ca else None
