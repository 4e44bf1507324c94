import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_vit
from mimjax.models import VIT_VARIANTS, posemb_sincos_2d, vit

# REFERENCE.md encoder parameter counts (timm counts pos_embed as a parameter).
EXPECTED_PARAMS_M = {"vit_tiny_patch16": 5.5, "vit_small_patch16": 21.7, "vit_base_patch16": 85.8,
                     "vit_large_patch16": 303.3, "vit_huge_patch14": 630.8}


@pytest.mark.parametrize("name", sorted(VIT_VARIANTS))
def test_every_size_shapes_and_param_count(name):
    patch, width, depth, heads = VIT_VARIANTS[name]
    model = vit(name, img_size=2 * patch)
    x = jnp.zeros((2, 2 * patch, 2 * patch, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, params, x)
    assert out.shape == (2, 1 + 4, width) and out.dtype == jnp.float32
    n = sum(a.size for a in jax.tree.leaves(params)) + 197 * width * (patch == 16) + 257 * width * (patch == 14)
    assert n / 1e6 == pytest.approx(EXPECTED_PARAMS_M[name], abs=0.1)


def test_tiny_runs_on_non_default_size_and_visible_subset():
    model = vit("vit_tiny_patch16", img_size=48)
    x = jax.random.normal(jax.random.key(0), (3, 48, 48, 3))
    params = model.init(jax.random.key(1), x)
    out = model.apply(params, x)
    chex.assert_shape(out, (3, 10, 192))
    ids_keep = jnp.array([[0, 4], [8, 1], [3, 3]], jnp.int32)
    chex.assert_shape(model.apply(params, x, ids_keep=ids_keep), (3, 3, 192))


def small_model_and_params(**kw):
    model = vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=3, **kw)  # N = 16
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    params = model.init(jax.random.key(1), x)
    return model, params, x


def test_matches_numpy_forward_with_logits_of_every_block():
    model, params, x = small_model_and_params()
    ids_keep = jnp.array([[5, 0, 9, 2], [15, 14, 1, 7]], jnp.int32)
    ref, ref_logits = numpy_vit.encoder(params["params"], x, 8, 3, ids_keep)
    np.testing.assert_allclose(model.apply(params, x, ids_keep=ids_keep), ref, atol=2e-5)
    for b in range(3):
        tokens, logits = model.apply(params, x, ids_keep=ids_keep, attn_block=b)
        np.testing.assert_allclose(tokens, ref, atol=2e-5)
        np.testing.assert_allclose(logits, ref_logits[b], rtol=1e-4, atol=1e-4)
        _, one = model.apply(params, x, ids_keep=ids_keep, attn_block=b, attn_head=2)
        np.testing.assert_allclose(one, ref_logits[b][:, 2:3], rtol=1e-4, atol=1e-4)


def test_teacher_early_exit_equals_full_pass():
    model, params, x = small_model_and_params()
    _, full = model.apply(params, x, attn_block=1, attn_head=1)
    early = model.apply(params, x, attn_block=1, attn_head=1, stop_at_attn=True)
    chex.assert_shape(early, (2, 1, 17, 17))
    np.testing.assert_array_equal(early, full)
    # Early exit computes nothing after block 1's q.k: no ops on block 2 in the jaxpr.
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x, attn_block=1, stop_at_attn=True))(params))
    full_jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x))(params))
    assert jaxpr.count("dot_general") < full_jaxpr.count("dot_general") / 2


@pytest.mark.parametrize("head", [1, None])
def test_qk_gives_the_logits_q_and_k(head):
    model, params, x = small_model_and_params()
    logits = model.apply(params, x, attn_block=1, attn_head=head, stop_at_attn=True)  # [B, 1 or H, T, T]
    q, k = model.apply(params, x, attn_block=1, attn_head=head, stop_at_attn=True, qk=True)
    chex.assert_shape([q, k], (2, 17, 1 if head is not None else 3, 64))
    np.testing.assert_allclose(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 64 ** -0.5, logits, rtol=1e-5, atol=1e-5)
    # Without stop_at_attn: the full output as without qk, and the same q, k.
    out, (q2, k2) = model.apply(params, x, attn_block=1, attn_head=head, qk=True)
    np.testing.assert_array_equal(out, model.apply(params, x))
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(k2, k)


def test_posemb_matches_independent_formula():
    np.testing.assert_allclose(posemb_sincos_2d(4, 4, 32), numpy_vit.sincos_2d(4, 32), atol=1e-6)
    assert not posemb_sincos_2d(14, 14, 768)[0].any()  # zero cls row


def test_bf16_compute_keeps_float32_params():
    model, params, x = small_model_and_params(dtype=jnp.bfloat16)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    out = model.apply(params, x)
    assert out.dtype == jnp.float32  # bf16 only in the products' operands (models/layers.py "Mixed precision")
    ref = vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=3).apply(params, x)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.1)


def test_remat_gives_same_values_and_grads():
    model, params, x = small_model_and_params()
    remat = vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=3, remat=True)
    loss = lambda m: (lambda p: (m.apply(p, x) ** 2).mean())
    g1 = jax.grad(loss(model))(params)
    g2 = jax.grad(loss(remat))(params)
    chex.assert_trees_all_close(g1, g2, atol=1e-6)


def test_mae_initialisation():
    model, params, _ = small_model_and_params()
    p = params["params"]
    assert np.std(p["cls_token"]) == pytest.approx(0.02, rel=0.5)
    fc1 = p["blocks"]["block_0"]["mlp"]["fc1"]["kernel"]  # xavier bound sqrt(6 / (192 + 768))
    assert np.abs(fc1).max() <= np.sqrt(6 / 960) and np.abs(fc1).max() > 0.9 * np.sqrt(6 / 960)
    q = p["blocks"]["block_0"]["attn"]["query"]["kernel"]  # fused qkv bound sqrt(6 / (192 + 576))
    assert np.abs(q).max() <= np.sqrt(6 / 768) and np.abs(q).max() > 0.9 * np.sqrt(6 / 768)
    pe = p["patch_embed"]["kernel"]  # xavier on [D, p*p*3]
    assert np.abs(pe).max() <= np.sqrt(6 / (192 + 192)) and np.abs(pe).max() > 0.9 * np.sqrt(6 / 384)
    assert not p["blocks"]["block_0"]["attn"]["query"]["bias"].any()
    np.testing.assert_array_equal(p["norm"]["scale"], 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(img_size=50), "img_size=50 is not divisible by patch_size=16"),
    (dict(colour=1), r"unknown argument\(s\) \['colour'\]"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vit("vit_tiny_patch16", **kwargs)


def test_bad_names_and_indices():
    with pytest.raises(ValueError, match="unknown ViT name 'vit_giant'"):
        vit("vit_giant")
    model, params, x = small_model_and_params()
    with pytest.raises(ValueError, match="attn_head must be in \\[0, 3\\), got 3"):
        model.apply(params, x, attn_block=0, attn_head=3)
    with pytest.raises(ValueError, match="attn_block must be in \\[0, 3\\), got 7"):
        model.apply(params, x, attn_block=7)
    with pytest.raises(ValueError, match="images must be"):
        model.apply(params, x[:, :16])


def test_attention_implementations_agree_and_a_wrong_one_is_named():
    """model.attention: the explicit softmax, XLA's dot_product_attention and "auto" (the
    explicit one on this CPU backend) give the same encoder output; "cudnn" needs a GPU."""
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    outs = {}
    for impl in ("auto", "explicit", "xla"):
        enc = vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=2, attention=impl)
        params = enc.init(jax.random.key(0), x)
        outs[impl] = enc.apply(params, x)
    np.testing.assert_allclose(outs["xla"], outs["explicit"], atol=1e-5)
    np.testing.assert_array_equal(outs["auto"], outs["explicit"])
    with pytest.raises(ValueError, match="'flash': expected one of"):
        vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=1, attention="flash").init(jax.random.key(0), x)
