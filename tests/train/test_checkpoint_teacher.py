import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import masking
from mimjax.train import teacher as teacher_lib
from mimjax.train.checkpoint import Checkpointer, load_params
from mimjax.models import vit


def tiny_params(width=32):
    model = vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=2, width=width, num_heads=4)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


def test_save_restore_and_fallback_from_a_corrupted_latest_step(tmp_path, caplog):
    _, params = tiny_params()
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2):
        state = {"step": jnp.int32(step), "params": jax.tree.map(lambda a: a + step, params)}
        ckpt.save(step, state, {"position": step})
    ckpt.wait()
    abstract = jax.eval_shape(lambda: state)
    step, restored, data_state = ckpt.restore_latest(abstract)
    assert step == 2 and data_state == {"position": 2}
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    # Corrupt every file of step 2's state: restore falls back to step 1 and names step 2.
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(3)
    step, restored, data_state = ckpt.restore_latest(abstract)
    assert step == 1 and data_state == {"position": 1}
    assert "step 2" in caplog.text
    assert os.path.isdir(tmp_path / "2.unreadable") and not os.path.exists(tmp_path / "2")  # moved aside
    ckpt.close()


def test_teacher_scores_match_manual_gpa(tmp_path):
    model, params = tiny_params()
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

    class T:  # the teacher section of a config
        block, head = 1, 2
    g = teacher_lib.scores(model, params, images, T, "gpa")
    q, k = model.apply({"params": params}, images, block=1, method="teacher_qk")  # all heads
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5  # [B, H, T, T]
    np.testing.assert_allclose(g, masking.gpa_scores(logits, head=2), atol=1e-6)
    T.head = -1
    np.testing.assert_allclose(teacher_lib.scores(model, params, images, T, "gpa"),
                               masking.gpa_scores(logits, head=None), atol=1e-6)
    np.testing.assert_allclose(teacher_lib.scores(model, params, images, T, "high"),
                               masking.cls_attention_scores(logits), atol=1e-6)


class TeacherSection:  # the teacher section of a config
    def __init__(self, block, head):
        self.block, self.head = block, head


CASES = [("gpa", 2), ("gpa", -1), ("high", -1)]


def logits_path(model, params, images, strategy, head, block=1):
    """The explicit path: the block's [B, H, T, T] logits, then gpa_scores / cls_attention_scores."""
    q, k = model.apply({"params": params}, images, block=block, method="teacher_qk")  # all heads
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5  # [B, H, T, T]
    if strategy == "high":
        return masking.cls_attention_scores(logits)
    return masking.gpa_scores(logits, head=None if head < 0 else head)


@pytest.mark.parametrize("strategy, head", CASES)
def test_teacher_scores_from_qk_match_the_logits_path_float32(strategy, head):
    model, params = tiny_params(width=64)  # 4 heads of 16
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    got = jax.jit(lambda p, x: teacher_lib.scores(model, p, x, TeacherSection(1, head), strategy))(params, images)
    want = jax.jit(lambda p, x: logits_path(model, p, x, strategy, head))(params, images)
    # 1e-5 relative: GPA scores are min-max scaled to [0, 1] (absolute = relative to the range).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 if strategy == "gpa" else 1e-7)


@pytest.mark.parametrize("strategy, head", CASES)
def test_teacher_scores_from_qk_match_the_logits_path_bfloat16(strategy, head):
    model, params = tiny_params(width=64)
    model = model.clone(dtype=jnp.bfloat16)
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    tcfg = TeacherSection(1, head)
    # Op by op, both paths see bit-identical bf16 q and k; the scores are float32 from
    # there, so the float32 tolerance holds.
    got = teacher_lib.scores(model, params, images, tcfg, strategy)
    want = logits_path(model, params, images, strategy, head)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 if strategy == "gpa" else 1e-7)
    # Under jit, XLA fuses the two programs differently and rounds the bf16 activations
    # of blocks 0..1 at different places (the logits program alone differs from its op-by-op
    # run by ~0.5% of the largest logit); the scores then differ by bf16 noise, a few 1e-3
    # of the [0, 1] range here. 1e-2: a few bf16 ulps (2^-8) of the range, not a bug's size.
    got = jax.jit(lambda p, x: teacher_lib.scores(model, p, x, tcfg, strategy))(params, images)
    want = jax.jit(lambda p, x: logits_path(model, p, x, strategy, head))(params, images)
    np.testing.assert_allclose(got, want, atol=1e-2 if strategy == "gpa" else 1e-3)


TT = re.compile(r"[\[,]17,17\]")  # any shape ending in [T, T], T = 1 + 16 tokens


@pytest.mark.parametrize("strategy, head", CASES)
def test_teacher_scoring_program_has_no_token_by_token_array(strategy, head):
    # Block 0 as the GPA block: the blocks before it would form their own (softmax)
    # attention maps, which are not the teacher's scoring; here only the scoring is left.
    model, params = tiny_params(width=64)  # B = 2, H = 4, T = 17, hd = 16: no other dim is 17
    images = jnp.zeros((2, 32, 32, 3))
    fn = jax.jit(lambda p, x: teacher_lib.scores(model, p, x, TeacherSection(0, head), strategy))
    jaxpr = str(jax.make_jaxpr(fn)(params, images))
    assert "f32[2,17,16]" in jaxpr or "f32[2,17,4,16]" in jaxpr  # the check sees token shapes
    assert not TT.search(jaxpr), TT.findall(jaxpr)
    hlo = fn.lower(params, images).compile().as_text()
    assert not TT.search(hlo), TT.findall(hlo)
    # The explicit logits path does form them: the check can tell.
    explicit = str(jax.make_jaxpr(lambda p, x: logits_path(model, p, x, strategy, head, block=0))(params, images))
    assert TT.search(explicit)


def test_ema_update():
    e = teacher_lib.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, 0.9)
    np.testing.assert_allclose(e["w"], 0.9)


def test_teacher_of_wrong_architecture_is_refused_by_name(tmp_path):
    _, params = tiny_params(width=32)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(1, {"params": {"encoder": params}}, {})
    ckpt.wait()
    ckpt.close()
    assert load_params(str(tmp_path / "checkpoints"))["encoder"]["cls_token"].shape == (1, 1, 32)
    other, _ = tiny_params(width=64)
    with pytest.raises(ValueError, match=r"does not match the architecture; wrong shapes: blocks/block_0/attn/key/bias \(4, 8\) \(expected \(4, 16\)\)"):
        teacher_lib.load_checkpoint_params(str(tmp_path), other)
    with pytest.raises(ValueError, match="is not a mimjax workdir"):
        teacher_lib.load_checkpoint_params(str(tmp_path / "checkpoints"), other)
