"""The GPA teacher (GPA_SPEC.md 2): which network, where its weights come from, and the
per-patch scores it hands to the masking.

- `checkpoint`: a frozen ViT loaded from a mimjax workdir (its encoder) or from a
  directory written by `mimjax import` (a PyTorch MAE/timm checkpoint converted).
- `ema`: a momentum copy of the student encoder, kept in the train state.
- `self`: the student encoder itself on the full image, gradients stopped.
The teacher runs inside the train step's jit, stops after the GPA block's q and k, and
has no optimizer state.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from mimjax import masking, workdir
from mimjax.models import VisionTransformer, model_from_config, vit


def teacher_model(cfg, student: VisionTransformer) -> VisionTransformer:
    """The teacher's architecture: a checkpoint workdir's own encoder (from its config.json),
    the named ViT for an imported checkpoint, else the student encoder. It always runs at
    the student's image size and dtype (the fixed sin-cos position embedding fits any grid)."""
    if cfg.teacher.source != "checkpoint":
        return student
    mc = workdir.model_config(cfg.teacher.path)
    if mc is None:
        return vit(cfg.teacher.name, img_size=student.img_size, dtype=student.dtype)
    return model_from_config(mc).encoder.clone(img_size=student.img_size, dtype=student.dtype,
                                             remat=False, drop_path=0.0)


def scores(teacher: VisionTransformer, teacher_params, images, tcfg, strategy: str):
    """Per-patch teacher scores [B, N] float32, gradients stopped.

    strategy 'gpa' (and the GPA head target): GPA scores of block tcfg.block, head
    tcfg.head (-1: mean over heads); 'high': AttMask's post-softmax cls attention of that
    block, mean over heads.
    """
    head = None if (tcfg.head < 0 or strategy == "high") else tcfg.head
    logits = teacher.apply({"params": teacher_params}, images, attn_block=tcfg.block,
                           attn_head=head, stop_at_attn=True)  # [B, 1 or H, T, T]
    if strategy == "high":
        s = masking.cls_attention_scores(logits)
    else:
        s = masking.gpa_scores(logits, head=None if head is None else 0)
    return jax.lax.stop_gradient(s)


def ema_update(ema_params, params, momentum: float):
    return jax.tree.map(lambda e, p: momentum * e + (1 - momentum) * p, ema_params, params)


def load_checkpoint_params(path: str, teacher: VisionTransformer):
    """Encoder params of a frozen teacher from a mimjax workdir (latest checkpoint).

    Shapes are checked against the teacher architecture; mismatches are listed by name.
    """
    if not os.path.isdir(workdir.checkpoints_dir(path)):
        raise ValueError(f"teacher.path={path!r} is not a mimjax workdir (no checkpoints/ inside); "
                         f"expected a pre-training workdir or a directory written by `mimjax import`")
    params = workdir.load_params(path)
    enc = params.get("encoder", params)
    expected = jax.eval_shape(lambda: teacher.init(
        jax.random.key(0), jnp.zeros((1, teacher.img_size, teacher.img_size, 3))))["params"]
    check_shapes(enc, expected, f"teacher checkpoint {path!r}")
    return jax.tree.map(jnp.asarray, enc)


def _flat_shapes(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def check_shapes(got, expected, what: str):
    """Raises ValueError listing missing, unexpected and mis-shaped parameters by name."""
    from mimjax.export import shape_mismatches

    problems = shape_mismatches(_flat_shapes(got), _flat_shapes(expected))
    if problems:
        raise ValueError(f"{what} does not match the architecture; " + "; ".join(problems))
