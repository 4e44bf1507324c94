import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_vit
from mimjax.models import VIT_VARIANTS, posemb_sincos_2d, vit
from mimjax.models.vit import POOLS, VisionTransformer

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


def encode(model, params, x, **kw):
    return model.apply(params, x, method=VisionTransformer.encode, **kw)


def test_tiny_runs_on_non_default_size_and_visible_subset():
    model = vit("vit_tiny_patch16", img_size=48)
    x = jax.random.normal(jax.random.key(0), (3, 48, 48, 3))
    params = model.init(jax.random.key(1), x)
    out = model.apply(params, x)
    chex.assert_shape(out, (3, 10, 192))
    ids_keep = jnp.array([[0, 4], [8, 1], [3, 3]], jnp.int32)
    chex.assert_shape(encode(model, params, x, ids_keep=ids_keep), (3, 3, 192))


def small_model_and_params(**kw):
    model = vit("vit_tiny_patch16", img_size=32, patch_size=8, depth=3, **kw)  # N = 16
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    params = model.init(jax.random.key(1), x)
    return model, params, x


@pytest.mark.parametrize("scan", [False, True])
def test_every_entry_point_matches_numpy(scan):
    """encode (all patches, the visible ones), features (both pools) and teacher_qk (every
    block, one head or all: q k^T * hd^-0.5 are the block's logits) against NumPy float64."""
    model, params, x = small_model_and_params(scan=scan)
    full, ref_logits = numpy_vit.encoder(params["params"], x, 8, 3)
    np.testing.assert_allclose(model.apply(params, x), full, atol=2e-5)
    np.testing.assert_allclose(encode(model, params, x), full, atol=2e-5)
    ids_keep = jnp.array([[5, 0, 9, 2], [15, 14, 1, 7]], jnp.int32)
    ref, _ = numpy_vit.encoder(params["params"], x, 8, 3, ids_keep)
    np.testing.assert_allclose(encode(model, params, x, ids_keep=ids_keep), ref, atol=2e-5)
    for pool in POOLS:
        got = model.apply(params, x, pool=pool, method=VisionTransformer.features)
        chex.assert_shape(got, (2, 192))
        np.testing.assert_allclose(got, numpy_vit.features(params["params"], x, 8, 3, pool), atol=2e-5)
    for b in range(3):
        for head in (None, 2):
            q, k = model.apply(params, x, block=b, head=head, method=VisionTransformer.teacher_qk)
            chex.assert_shape([q, k], (2, 17, 3 if head is None else 1, 64))
            want = ref_logits[b] if head is None else ref_logits[b][:, head:head + 1]
            np.testing.assert_allclose(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 64 ** -0.5, want, rtol=1e-4, atol=1e-4)


def test_encode_with_a_mask_token_matches_numpy():
    model, params, x = small_model_and_params()
    mask = jnp.zeros((2, 16), bool).at[0, jnp.array([1, 5, 6])].set(True).at[1, jnp.array([0, 15])].set(True)
    token = jax.random.normal(jax.random.key(2), (1, 1, 192))
    want = numpy_vit.encoder_with_mask_token(params["params"], x, 8, 3, mask, token)
    np.testing.assert_allclose(encode(model, params, x, mask=mask, mask_token=token), want, atol=2e-5)


def test_teacher_qk_stops_after_the_block():
    model, params, x = small_model_and_params()
    # Nothing after block 1's q and k: far fewer products than a full pass.
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x, block=1, method=VisionTransformer.teacher_qk))(params))
    full_jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x))(params))
    assert jaxpr.count("dot_general") < full_jaxpr.count("dot_general") / 2


def test_posemb_matches_independent_formula():
    np.testing.assert_allclose(posemb_sincos_2d(4, 4, 32), numpy_vit.sincos_2d(4, 32), atol=1e-6)
    assert not posemb_sincos_2d(14, 14, 768)[0].any()  # zero cls row


def test_bf16_compute_keeps_float32_params():
    model, params, x = small_model_and_params(dtype=jnp.bfloat16)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    out = model.apply(params, x)
    assert out.dtype == jnp.float32  # bf16 only in the products' operands (models/precision.py)
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
    qk = VisionTransformer.teacher_qk
    with pytest.raises(ValueError, match="head must be in \\[0, 3\\), got 3"):
        model.apply(params, x, block=0, head=3, method=qk)
    with pytest.raises(ValueError, match="block must be in \\[0, 3\\), got 7"):
        model.apply(params, x, block=7, method=qk)
    with pytest.raises(ValueError, match="images must be"):
        model.apply(params, x[:, :16])
    with pytest.raises(ValueError, match="pool must be one of"):
        model.apply(params, x, pool="max", method=VisionTransformer.features)
    with pytest.raises(ValueError, match="mask and mask_token must be given together"):
        encode(model, params, x, mask=jnp.zeros((2, 16), bool))


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
