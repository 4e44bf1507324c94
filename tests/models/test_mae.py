import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_vit
from mimjax import masking
from mimjax.models import init_mae, mae, patchify, unpatchify, zscore

KW = dict(img_size=32, patch_size=8, depth=2, decoder_width=32, decoder_depth=2, decoder_heads=4)


def setup(**kw):
    model = mae("mae_vit_tiny_patch16", **{**KW, **kw})
    params = init_mae(model, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    mask = masking.random_mask(jax.random.key(2), 3, 16, 0.75)
    return model, params, images, mask


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_numpy_mae(norm_pix):
    model, params, images, mask = setup(norm_pix_loss=norm_pix)
    out = model.apply({"params": params}, images, mask)
    ref_loss, ref_pred = numpy_vit.mae_loss(params, images, mask.mask, mask.ids_keep, 8, 3, 4, norm_pix)
    np.testing.assert_allclose(out["pred"], ref_pred, atol=5e-5)
    np.testing.assert_allclose(out["pixel_loss"], ref_loss, rtol=1e-5)
    assert out["gpa_loss"] == 0 and out["loss"] == out["pixel_loss"]
    chex.assert_shape(out["pred"], (3, 16, 192))
    np.testing.assert_array_equal(out["mask"], mask.mask)


def test_gpa_head_loss_and_init_copy():
    model, params, images, mask = setup(gpa_head=True)
    chex.assert_trees_all_equal(params["gpa_blocks"], params["decoder_blocks"])
    assert not np.array_equal(params["gpa_pred"]["kernel"], params["decoder_pred"]["kernel"])
    g = jax.random.uniform(jax.random.key(3), (3, 16))
    out = model.apply({"params": params}, images, mask, gpa_target=g)
    target = (g - g.mean(-1, keepdims=True)) / np.sqrt(np.var(np.asarray(g), -1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out["gpa_loss"], ((out["gpa_pred"] - target) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(out["loss"], out["pixel_loss"] + out["gpa_loss"], rtol=1e-6)
    # Before the head is trained its input-mean path differs from its block path.
    late = mae("mae_vit_tiny_patch16", gpa_head=True, gpa_head_late_start=True, **KW)
    early_out = late.apply({"params": params}, images, mask, gpa_target=g, progress=0.5)
    late_out = late.apply({"params": params}, images, mask, gpa_target=g, progress=0.8)
    np.testing.assert_allclose(late_out["gpa_pred"], out["gpa_pred"], atol=1e-6)
    assert not np.allclose(early_out["gpa_pred"], out["gpa_pred"])
    with pytest.raises(ValueError, match="needs gpa_target"):
        model.apply({"params": params}, images, mask)


def dots_outside_cond(jaxpr) -> int:
    """dot_generals a program always runs: all of them, in nested scans and remats too,
    except those inside a lax.cond branch."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            continue
        n += eqn.primitive.name == "dot_general"
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else [v]:
                if isinstance(sub, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr)):
                    n += dots_outside_cond(getattr(sub, "jaxpr", sub))
    return n


def test_late_start_head_blocks_are_skipped_not_computed_before_they_start():
    """Before progress 0.75 the head's blocks must not run (they sit in a lax.cond branch):
    the train step's always-run matmuls are those of the model without the head, forward
    and backward."""
    _, params, images, mask = setup(gpa_head=True)
    g = jax.random.uniform(jax.random.key(3), (3, 16))

    def always_run(model, p):
        loss = lambda p, t: model.apply({"params": p}, images, mask, gpa_target=g, progress=t)["loss"]
        return dots_outside_cond(jax.make_jaxpr(jax.grad(loss))(p, 0.5).jaxpr)

    late = mae("mae_vit_tiny_patch16", gpa_head=True, gpa_head_late_start=True, **KW)
    always = mae("mae_vit_tiny_patch16", gpa_head=True, **KW)
    plain = mae("mae_vit_tiny_patch16", **KW)
    no_head = {k: v for k, v in params.items() if not k.startswith("gpa_")}
    assert always_run(late, params) == always_run(plain, no_head) < always_run(always, params)


def test_grads_reach_encoder_and_mask_token_only_through_masked_loss():
    model, params, images, mask = setup()
    grads = jax.grad(lambda p: model.apply({"params": p}, images, mask)["loss"])(params)
    assert np.abs(grads["mask_token"]).sum() > 0
    assert np.abs(grads["encoder"]["cls_token"]).sum() > 0


def test_patchify_roundtrip_and_order():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    p = patchify(x, 2)
    np.testing.assert_array_equal(p[0, 1], x[0, 0:2, 2:4].reshape(-1))  # (p, q, c) order
    np.testing.assert_array_equal(unpatchify(p, 2), x)


def test_zscore_constant_is_finite():
    assert np.isfinite(zscore(jnp.ones((2, 5)))).all()


def test_factory_errors():
    with pytest.raises(ValueError, match="start with 'mae_'"):
        mae("vit_base_patch16")
    with pytest.raises(ValueError, match="decoder_widht"):
        mae("mae_vit_base_patch16", decoder_widht=3)
