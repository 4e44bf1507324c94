"""The GPA teacher (docs/method.md §2), all of it: whether a run has one, which network it is,
where its weights come from, the per-patch scores it hands to the masking and the GPA
head, and the EMA update.

- `checkpoint`: a frozen ViT loaded from a mimjax workdir (its encoder) or from a
  directory written by `mimjax import` (a PyTorch MAE/timm checkpoint converted).
- `ema`: a momentum copy of the student encoder, kept in the train state.
- `self`: the student encoder itself on the full image, gradients stopped.
The teacher runs inside the train step's jit, stops after the GPA block's q and k, and
has no optimizer state. Its scores come from q and k directly (O(T hd) per head); the
block's [B, H, T, T] attention logits are never formed. `Teacher.from_config(cfg, student)`
is what the trainer, the bench and `mimjax visualize` use.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mimjax import masking, workdir
from mimjax.models import VisionTransformer, model_from_config, vit
from mimjax.models.vit import VIT_VARIANTS


def uses_teacher(cfg) -> bool:
    """Whether a pre-training config needs a teacher: GPA or AttMask-style masking, or the GPA head."""
    return cfg.masking.strategy in ("gpa", "high") or bool(cfg.model.gpa_head)


def encoder_dims(mc) -> tuple[int, int, int]:
    """(depth, num_heads, patch_size) of the encoder a `model` config section describes."""
    patch, _, depth, heads = VIT_VARIANTS[mc.name[len("mae_"):]]
    return mc.get("depth") or depth, mc.get("num_heads") or heads, mc.get("patch_size") or patch


def teacher_run_model(cfg):
    """The `model` section of a checkpoint teacher's run directory, or None: an imported
    checkpoint, or no path yet (`mimjax plan` builds the named ViT, `teacher.name`)."""
    return workdir.model_config(cfg.teacher.path) if cfg.teacher.path else None


def describe(cfg) -> tuple[str, int, int, int]:
    """(description, depth, heads, patch) of the teacher, without building it: a checkpoint
    workdir's own encoder, the named ViT for an imported checkpoint, else the student's."""
    if cfg.teacher.source == "checkpoint":
        mc = teacher_run_model(cfg)
        if mc is not None:
            return f"workdir {cfg.teacher.path!r}", *encoder_dims(mc)
        patch, _, depth, heads = VIT_VARIANTS[cfg.teacher.name]
        return cfg.teacher.name, depth, heads, patch
    return "student", *encoder_dims(cfg.model)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A run's teacher. Without one in use (`in_use` False: random masking, no GPA head)
    `params` and `scores` return None; an EMA copy is still kept when source is "ema"."""

    source: str  # none | checkpoint | ema | self
    in_use: bool
    model: VisionTransformer  # the network whose attention gives the scores
    tcfg: Any  # the config's `teacher` section: block, head, path, ema_momentum
    strategy: str  # "gpa" (GPA scores; also the GPA head's target) | "high" (cls attention)

    @classmethod
    def from_config(cls, cfg, student: VisionTransformer) -> "Teacher":
        in_use = uses_teacher(cfg)
        return cls(cfg.teacher.source, in_use, teacher_model(cfg, student) if in_use else student, cfg.teacher,
                   "high" if cfg.masking.strategy == "high" else "gpa")

    def load_frozen(self):
        """The frozen checkpoint's encoder params (a "checkpoint" teacher in use), else None;
        a missing, mismatched or non-finite checkpoint raises ValueError naming what is wrong."""
        if self.in_use and self.source == "checkpoint":
            return load_checkpoint_params(self.tcfg.path, self.model)
        return None

    def init_ema(self, params):
        """The EMA copy the train state starts with (source "ema"): the student's encoder."""
        return jax.tree.map(jnp.copy, params["encoder"]) if self.source == "ema" else None

    def update_ema(self, ema_params, params):
        if self.source != "ema":
            return ema_params
        return ema_update(ema_params, params["encoder"], self.tcfg.ema_momentum)

    def params(self, params, ema_params, frozen):
        """The teacher's weights this step: frozen checkpoint, EMA copy, or the student's own."""
        if not self.in_use:
            return None
        return {"checkpoint": lambda: frozen, "ema": lambda: ema_params, "self": lambda: params["encoder"]}[self.source]()

    def scores(self, teacher_params, images):
        """Scores [B, N] for the masking / GPA head (see `scores`), or None without a teacher."""
        if teacher_params is None:
            return None
        return scores(self.model, teacher_params, images, self.tcfg, self.strategy)


def teacher_model(cfg, student: VisionTransformer) -> VisionTransformer:
    """The teacher's architecture: a checkpoint workdir's own encoder (from its config.json),
    the named ViT for an imported checkpoint, else the student encoder. It always runs at
    the student's image size, dtype, kernels and `scan` (the fixed sin-cos position embedding fits any grid)."""
    if cfg.teacher.source != "checkpoint":
        return student
    mc = teacher_run_model(cfg)
    if mc is None:
        return vit(cfg.teacher.name, img_size=student.img_size, dtype=student.dtype, attention=student.attention,
                   scan=student.scan)
    return model_from_config(mc).encoder.clone(img_size=student.img_size, dtype=student.dtype, remat=False,
                                             drop_path=0.0, attention=student.attention, scan=student.scan)


def scores(teacher: VisionTransformer, teacher_params, images, tcfg, strategy: str):
    """Per-patch teacher scores [B, N] float32, gradients stopped.

    strategy 'gpa' (and the GPA head target): GPA scores of block tcfg.block, head
    tcfg.head (-1: mean over heads); 'high': AttMask's post-softmax cls attention of that
    block, mean over heads.

    The teacher stops after that block's q and k (`VisionTransformer.teacher_qk`: the one
    head's, or all heads' for -1 and 'high') and the scores are computed from them
    (`masking.gpa_scores_from_qk`: column sums of q k^T as k . sum_i q_i;
    `masking.cls_attention_scores_from_qk`: the cls query's row only), O(T hd) per head:
    equal to `gpa_scores` / `cls_attention_scores` of the logits up to float rounding,
    without the [B, H, T, T] (or [B, T, T]) map.
    """
    head = None if (tcfg.head < 0 or strategy == "high") else tcfg.head
    q, k = teacher.apply({"params": teacher_params}, images, block=tcfg.block, head=head,
                         method="teacher_qk")  # each [B, T, 1 or H, hd]
    if strategy == "high":
        s = masking.cls_attention_scores_from_qk(q, k)
    else:
        s = masking.gpa_scores_from_qk(q, k, head=None if head is None else 0)
    return jax.lax.stop_gradient(s)


def ema_update(ema_params, params, momentum: float):
    return jax.tree.map(lambda e, p: momentum * e + (1 - momentum) * p, ema_params, params)


def load_checkpoint_params(path: str, teacher: VisionTransformer):
    """Encoder params of a frozen teacher from a mimjax workdir (latest checkpoint).

    Shapes are checked against the teacher architecture; mismatches are listed by name.
    Weights with a NaN or inf are a ValueError naming the first such tensor.
    """
    from mimjax import paths
    from mimjax.export import nonfinite

    if not paths.isdir(workdir.checkpoints_dir(path)):
        raise ValueError(f"teacher.path={path!r} is not a mimjax workdir (no checkpoints/ inside); "
                         f"expected a pre-training workdir or a directory written by `mimjax import`")
    params = workdir.load_params(path)
    enc = params.get("encoder", params)
    expected = jax.eval_shape(lambda: teacher.init(
        jax.random.key(0), jnp.zeros((1, teacher.img_size, teacher.img_size, 3))))["params"]
    check_shapes(enc, expected, f"teacher checkpoint {path!r}")
    if bad := nonfinite(enc):
        raise ValueError(f"teacher checkpoint {path!r} holds non-finite weights: {bad}; expected finite weights "
                         f"(the scores of NaN or inf weights say nothing)")
    return jax.tree.map(jnp.asarray, enc)


def check_shapes(got, expected, what: str):
    """Raises ValueError listing missing, unexpected and mis-shaped parameters by name."""
    from mimjax.export import shape_mismatches
    from mimjax.train.checkpoint import flat_shapes

    problems = shape_mismatches(flat_shapes(got), flat_shapes(expected))
    if problems:
        raise ValueError(f"{what} does not match the architecture; " + "; ".join(problems))
