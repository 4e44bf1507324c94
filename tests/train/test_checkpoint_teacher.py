import os

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
    _, logits = model.apply({"params": params}, images, attn_block=1)
    np.testing.assert_allclose(g, masking.gpa_scores(logits, head=2), atol=1e-6)
    T.head = -1
    np.testing.assert_allclose(teacher_lib.scores(model, params, images, T, "gpa"),
                               masking.gpa_scores(logits, head=None), atol=1e-6)
    np.testing.assert_allclose(teacher_lib.scores(model, params, images, T, "high"),
                               masking.cls_attention_scores(logits), atol=1e-6)


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
