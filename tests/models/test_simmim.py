"""SimMIM with GPA masking and the GPA head: forward and L1 loss against the NumPy reference,
the mask token at the encoder input, the GPA head, config selection, and a short end-to-end
run through `mimjax.train.train`."""
import importlib.util
import os
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpy_vit
import optax
import pytest

from mimjax.train import config as config_lib
from mimjax import masking
from mimjax.train import metrics
from mimjax.train import pretrain as train
from mimjax.models import (
    MAE,
    SimMIM,
    init_model,
    model_from_config,
    simmim,
    vit,
    zscore,
)
from mimjax.models.layers import Transformer

KW = {"img_size": 32, "patch_size": 8, "depth": 2}  # N = 16 patches, width 192, 3 heads
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def setup(**kw):
    model = simmim("simmim_vit_tiny_patch16", **{**KW, **kw})
    params = init_model(model, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    mask = masking.random_mask(jax.random.key(2), 3, 16, 0.6)
    return model, params, images, mask


@pytest.mark.parametrize("norm_pix", [False, True])
def test_forward_and_l1_loss_match_numpy(norm_pix):
    model, params, images, mask = setup(norm_pix_loss=norm_pix)
    out = model.apply({"params": params}, images, mask)
    ref_loss, ref_pred = numpy_vit.simmim_loss(params, images, mask.mask, 8, 3, norm_pix)
    np.testing.assert_allclose(out["pred"], ref_pred, atol=5e-5)
    np.testing.assert_allclose(out["pixel_loss"], ref_loss, rtol=1e-5)
    assert out["gpa_loss"] == 0 and out["loss"] == out["pixel_loss"]
    chex.assert_shape(out["pred"], (3, 16, 192))
    np.testing.assert_array_equal(out["mask"], mask.mask)
    assert set(out) == {"loss", "pixel_loss", "gpa_loss", "pred", "mask"}


def test_masked_patch_tokens_are_the_mask_token_at_the_encoder_input():
    model, params, images, mask = setup()
    seen = []

    def record_transformer_input(next_fun, args, kwargs, context):
        if isinstance(context.module, Transformer) and context.method_name == "__call__":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record_transformer_input):
        model.apply({"params": params}, images, mask)
    x = np.asarray(seen[0])  # [B, 1+N, D]: cls + patch tokens, position embedding added
    pos = numpy_vit.sincos_2d(4, 192)
    patch_tokens = x[:, 1:] - pos[1:]
    m = np.asarray(mask.mask)
    np.testing.assert_allclose(patch_tokens[m], np.broadcast_to(params["mask_token"][0], (m.sum(), 192)), atol=1e-6)
    k = params["encoder"]["patch_embed"]
    embedded = numpy_vit.patches(np.asarray(images), 8) @ np.asarray(k["kernel"]).reshape(-1, 192) + k["bias"]
    np.testing.assert_allclose(patch_tokens[~m], embedded[~m], atol=1e-5)
    # So nothing of a masked patch's pixels reaches the encoder or the prediction.
    noisy = jnp.where(np.repeat(np.repeat(m.reshape(3, 4, 4), 8, 1), 8, 2)[..., None], 100.0, images)
    out, out_noisy = (model.apply({"params": params}, x_, mask) for x_ in (images, noisy))
    np.testing.assert_allclose(out_noisy["pred"], out["pred"], atol=1e-5)


def test_encoder_params_are_the_vit_params():
    """Same names and shapes as `vit(...)`: EMA / self teachers and timm export read them."""
    _, params, images, _ = setup()
    plain = vit("vit_tiny_patch16", **KW).init(jax.random.key(0), images)["params"]
    chex.assert_trees_all_equal_shapes(params["encoder"], plain)
    assert set(params) == {"encoder", "mask_token", "decoder_pred"}


def test_gpa_head_loss_and_training():
    model, params, images, mask = setup(gpa_head=True)
    g = jax.random.uniform(jax.random.key(3), (3, 16))
    out = model.apply({"params": params}, images, mask, gpa_target=g)
    np.testing.assert_allclose(out["gpa_loss"], ((out["gpa_pred"] - zscore(g)) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(out["loss"], out["pixel_loss"] + out["gpa_loss"], rtol=1e-6)
    chex.assert_shape(out["gpa_pred"], (3, 16))
    with pytest.raises(ValueError, match="needs gpa_target"):
        model.apply({"params": params}, images, mask)
    tx = optax.adam(3e-4)

    @jax.jit
    def step(params, opt_state):
        loss_fn = lambda p: model.apply({"params": p}, images, mask, gpa_target=g)["gpa_loss"]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state, losses = tx.init(params), []
    for i in range(25):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
        if i == 0:  # the GPA loss trains its head and the encoder, not the pixel head
            assert np.abs(grads["gpa_pred"]["kernel"]).sum() > 0
            assert np.abs(grads["encoder"]["blocks"]["block_0"]["mlp"]["fc1"]["kernel"]).sum() > 0
            assert not np.abs(grads["decoder_pred"]["kernel"]).any()
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


def test_model_from_config_dispatches_on_arch(tiny_config):
    c = tiny_config()
    assert isinstance(model_from_config(c.model), MAE)
    c.model.arch = "simmim"
    model = model_from_config(c.model)
    assert isinstance(model, SimMIM) and model.encoder.num_patches == 16 and model.encoder.width == 64
    assert set(init_model(model, jax.random.key(0))) == {"encoder", "mask_token", "decoder_pred"}
    c.model.arch = "beit"
    with pytest.raises(ValueError, match="model.arch='beit'"):
        model_from_config(c.model)
    with pytest.raises(ValueError, match="start with 'simmim_'"):
        simmim("vit_base_patch16")


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.model, "arch", "simmmim"), r"config.model.arch='simmmim': expected one of \['mae', 'simmim'\]"),
    (lambda c: (setattr(c.model, "arch", "simmim"), setattr(c.model, "gpa_head_late_start", True)),
     r"config.model.gpa_head_late_start=True: expected False for model.arch='simmim'"),
])
def test_bad_arch_is_a_config_error(change, match):
    c = config_lib.base_config()
    c.total_steps, c.batch_size, c.data.source = 10, 8, "embedded"
    config_lib.validate(c)
    change(c)
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


def simmim_config(arg):
    spec = importlib.util.spec_from_file_location("simmim_cfg", os.path.join(CONFIGS, "simmim.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize("arg", [None, "vit_base_patch16,gpa", "vit_base_patch16,feature",
                                 "vit_large_patch16,feature,ema", "vit_base_patch16,feature,runlocal"])
def test_shipped_simmim_configs_validate(arg, tmp_path):
    c = simmim_config(arg)
    if c.teacher.source == "checkpoint":
        c.teacher.path = str(tmp_path)
    config_lib.validate(c, num_devices=1)
    assert c.model.arch == "simmim" and c.masking.mask_ratio == 0.6 and not c.model.norm_pix_loss
    assert c.model.gpa_head == ("feature" in (arg or ""))


@pytest.mark.slow  # ~20 s on 2 CPU cores; like the other train.train runs in tests/test_train.py
def test_simmim_gpa_feature_trains_end_to_end(tmp_path):
    """SimMIM + GPA masking + GPA head with an EMA teacher (as configs/demo.py), 30 steps on
    the embedded photos: the loss goes down."""
    c = simmim_config("vit_tiny_patch16,feature,runlocal")
    c.total_steps, c.log_every, c.checkpoint_every = 30, 5, 100
    c.masking.progress = "step"
    c.teacher.block, c.teacher.head, c.teacher.ema_momentum = 1, -1, 0.99
    c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 5
    t0 = time.perf_counter()
    last = train.train(c, str(tmp_path))
    seconds = time.perf_counter() - t0
    rows = metrics.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
    losses = [r["loss"] for r in rows]
    print(f"simmim+gpa e2e: {seconds:.1f}s, " + ", ".join(
        f"{k} {[round(r[k], 3) for r in rows]}" for k in ("loss", "pixel_loss", "gpa_loss")))
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert last["gpa_loss"] > 0 and last["n_hard"] > 0 and np.isfinite(last["loss"])
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert os.path.exists(tmp_path / "snapshots" / "step_0000030.png")
