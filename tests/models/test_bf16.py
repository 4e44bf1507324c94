"""The mixed-precision policy of `model.dtype` (models/precision.py): products
in bf16 with float32 accumulation and float32 everything else, bf16 gradients that match
float32's, parameters that stay float32, and GPA scores / masks that bf16 barely moves.

Tolerances: bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per operand); the
products accumulate in float32, so a product's relative error is a few 1e-3 and a loss, a
mean over many such terms, moves far less (measured ~1e-4). 1e-2 on the loss is the bf16
budget of one rounded operand per product, with room; 2e-2 on the gradient norm, whose
backward products round the cotangent as well. GPA scores are min-max scaled to [0, 1], so
an absolute tolerance is relative to their range: 3e-2 = 8 bf16 ulps of it (measured 1.2e-2
on the demo model); a mask compares ranks of those scores and changes only where two
patches' scores are closer than that.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax.models import precision
from mimjax.models.precision import mixed_dot_general, resolve_dtype
from mimjax.train import config as config_lib
from mimjax.train import step as step_lib

DIMS = [  # (x shape, w shape, dimension_numbers): every product form the models use
    ((4, 5, 6), (6, 7), (((2,), (0,)), ((), ()))),  # Dense
    ((4, 5, 6), (6, 3, 2), (((2,), (0,)), ((), ()))),  # DenseGeneral to heads (q, k, v)
    ((4, 5, 3, 2), (3, 2, 6), (((2, 3), (0, 1)), ((), ()))),  # DenseGeneral from heads (out)
    ((2, 3, 5, 4), (2, 3, 7, 4), (((3,), (3,)), ((0, 1), (0, 1)))),  # q k^T per head
    ((2, 3, 5, 7), (2, 3, 7, 4), (((3,), (2,)), ((0, 1), (0, 1)))),  # weights @ v
    ((2, 3, 7, 5), (2, 3, 7, 4), (((2,), (2,)), ((0, 1), (0, 1)))),  # transposed forms
]


@pytest.mark.parametrize("xs, ws, dims", DIMS)
def test_mixed_product_and_its_gradients_match_float32(xs, ws, dims):
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
    mixed = mixed_dot_general(jnp.bfloat16)

    def loss(dot):
        return lambda x, w: jnp.sin(dot(x, w, dims)).sum()

    y = jax.jit(lambda x, w: mixed(x, w, dims))(x, w)
    assert y.dtype == jnp.float32
    ref = jax.lax.dot_general(x, w, dims, precision=jax.lax.Precision.HIGHEST)
    assert np.abs(y - ref).max() <= 1e-2 * np.abs(ref).max()
    want = jax.grad(loss(jax.lax.dot_general), (0, 1))(x, w)
    got = jax.jit(jax.grad(loss(mixed), (0, 1)))(x, w)  # compiled: XLA:CPU runs the bf16 products
    for g, r in zip(got, want):
        assert g.dtype == jnp.float32 and g.shape == r.shape
        assert np.abs(g - r).max() <= 3e-2 * np.abs(r).max()


def test_float32_policy_is_the_plain_product():
    assert mixed_dot_general(jnp.float32) is jax.lax.dot_general


def subjaxprs(params):
    """The jaxprs inside an equation's params (jit, scan, remat, custom_vjp bodies)."""
    for v in params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def product_operand_dtypes(jaxpr):
    """[(lhs dtype, rhs dtype, preferred_element_type)] of every dot_general, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append((str(eqn.invars[0].aval.dtype), str(eqn.invars[1].aval.dtype),
                        str(eqn.params.get("preferred_element_type"))))
        for sub in subjaxprs(eqn.params):
            out += product_operand_dtypes(sub)
    return out


def elementwise_on_bf16(jaxpr):
    """Names of the primitives other than products, converts and data movement that see a bf16 value."""
    moves = {"dot_general", "convert_element_type", "transpose", "reshape", "broadcast_in_dim", "squeeze",
             "concatenate", "slice", "dynamic_slice", "gather", "copy", "copy_p", "pjit", "custom_vjp_call",
             "custom_vjp_call_jaxpr", "closed_call", "remat", "checkpoint", "scan", "select_n"}
    out = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name not in moves and any(
                getattr(v.aval, "dtype", None) == jnp.bfloat16 for v in [*eqn.invars, *eqn.outvars]):
            out.add(eqn.primitive.name)
        for sub in subjaxprs(eqn.params):
            out |= elementwise_on_bf16(sub)
    return out


def gpa_in(tiny_config, dtype):
    """The tiny GPA-MAE computing in `dtype`, its teacher scoring with all heads of block 1."""
    return tiny_config(gpa=True, teacher=dict(head=-1), model=dict(dtype=dtype))


def one_step(c, images):
    built = step_lib.build(c, 1000)
    state = jax.jit(built.init_state)(jax.random.key(0))
    new, metrics = jax.jit(built.make_step(None))(state, {"image": images}, None, jax.random.key(2))
    return built, state, new, metrics


def images_for(c, n=8):
    return jax.random.uniform(jax.random.key(5), (n, c.model.img_size, c.model.img_size, 3), minval=-2.0, maxval=2.0)


def test_bf16_train_step_program_follows_the_policy(tiny_config):
    """In the whole step (teacher, student, decoder, GPA head, backward, AdamW): every product
    that is not a per-head attention product on CPU multiplies bf16 by bf16 into float32, and no
    op but a product, a convert or data movement ever sees a bf16 value (no bf16 LayerNorm,
    softmax, GELU, residual, loss, optimizer)."""
    c = gpa_in(tiny_config, "bfloat16")
    built = step_lib.build(c, 1000)
    state = jax.eval_shape(built.init_state, jax.random.key(0))
    images = jax.ShapeDtypeStruct((8, c.model.img_size, c.model.img_size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(built.make_step(None))(state, {"image": images}, None, jax.random.key(2)).jaxpr
    prods = product_operand_dtypes(jaxpr)
    half = [p for p in prods if p[0] == "bfloat16"]
    assert half and all(p == ("bfloat16", "bfloat16", "float32") for p in half)
    full = [p for p in prods if p[0] != "bfloat16"]
    assert all(p[:2] == ("float32", "float32") for p in full)
    # The float32 ones: the per-head T x T products on CPU (4 per attention layer with its
    # backward, 2 in a forward-only teacher block), the GPA score reduction (HIGHEST), nothing else.
    if jax.default_backend() != "cpu":
        assert len(full) <= 1
    assert elementwise_on_bf16(jaxpr) == set()


def test_bf16_step_matches_float32_and_keeps_float32_state(tiny_config):
    c32, c16 = gpa_in(tiny_config, "float32"), gpa_in(tiny_config, "bfloat16")
    images = images_for(c32)
    _, _, s32, m32 = one_step(c32, images)
    _, state16, s16, m16 = one_step(c16, images)
    for tree in (state16, s16):  # params, Adam moments, EMA teacher: float32 before and after
        floats = [a.dtype for a in jax.tree.leaves((tree.params, tree.opt_state, tree.ema_params))
                  if jnp.issubdtype(a.dtype, jnp.floating)]
        assert floats and all(d == jnp.float32 for d in floats)
    for k, tol in (("loss", 1e-2), ("pixel_loss", 1e-2), ("gpa_loss", 1e-2), ("grad_norm", 2e-2)):
        assert abs(float(m16[k]) - float(m32[k])) <= tol * abs(float(m32[k])), (k, m16[k], m32[k])
    for a, b in zip(jax.tree.leaves(s16.params), jax.tree.leaves(s32.params)):
        assert a.dtype == b.dtype == jnp.float32


def test_gpa_scores_and_masks_under_bf16(tiny_config):
    c32, c16 = gpa_in(tiny_config, "float32"), gpa_in(tiny_config, "bfloat16")
    images = images_for(c32, 16)
    out = {}
    for c in (c32, c16):
        built = step_lib.build(c, 1000)
        state = jax.jit(built.init_state)(jax.random.key(0))
        tp = built.teacher.params(state.params, state.ema_params, None)
        g = jax.jit(built.teacher.scores)(tp, images)
        n = built.encoder.num_patches
        masks = jax.jit(lambda g, t: step_lib.make_mask(c, jax.random.key(3), g, n, jnp.arange(16), t).mask)
        out[c.model.dtype] = g, [masks(g, t) for t in (0.0, 0.5, 1.0)]
    (g32, m32), (g16, m16) = out["float32"], out["bfloat16"]
    assert g16.dtype == jnp.float32
    assert np.abs(g16 - g32).max() <= 3e-2
    for a, b in zip(m16, m32):  # the same masks up to near-ties in the scores
        assert (a != b).mean() <= 0.05


@pytest.mark.parametrize("name, backend, native, want", [
    ("float32", "gpu", True, jnp.float32), ("bfloat16", "cpu", False, jnp.bfloat16),
    ("float16", "cpu", False, jnp.float16), ("auto", "gpu", False, jnp.bfloat16),
    ("auto", "tpu", False, jnp.bfloat16), ("auto", "cpu", True, jnp.bfloat16), ("auto", "cpu", False, jnp.float32)])
def test_auto_dtype_resolution(name, backend, native, want):
    assert resolve_dtype(name, backend=backend, native_bf16=native) == jnp.dtype(want)


def test_auto_dtype_on_this_host_and_bad_names(tiny_config):
    want = jnp.bfloat16 if jax.default_backend() != "cpu" or precision.cpu_has_native_bf16() else jnp.float32
    assert resolve_dtype("auto") == jnp.dtype(want)
    with pytest.raises(ValueError, match="compute dtype"):
        resolve_dtype("bf16")
    c = tiny_config(model=dict(dtype="auto"))
    config_lib.validate(c, num_devices=1)


def test_target_backend_is_the_platform_the_policy_reads_within_its_block():
    host = jax.default_backend()
    with precision.target_backend("tpu"):
        assert precision.current_platform() == "tpu"
        assert resolve_dtype("auto") == jnp.dtype(jnp.bfloat16)
    assert precision.current_platform() == host
    with pytest.raises(ValueError, match="target platform 'cuda'"):
        with precision.target_backend("cuda"):
            pass


def test_recipes_ask_for_auto_and_smoke_runs_for_float32():
    from mimjax.models import model_from_config
    from mimjax.schema import load_config_file

    for recipe in ("mae.py:vit_base_patch16", "gpa_mae.py:vit_base_patch16,feature", "simmim.py:vit_base_patch16"):
        path, arg = recipe.split(":")
        c = load_config_file(f"{config_lib.__file__.rsplit('/train/', 1)[0]}/configs/{path}", arg)
        assert c.model.dtype == "auto"
        assert model_from_config(c.model).encoder.dtype == resolve_dtype("auto")
        smoke = load_config_file(f"{config_lib.__file__.rsplit('/train/', 1)[0]}/configs/{path}", arg + ",runlocal")
        assert smoke.model.dtype == "float32"


def test_bf16_with_remat_and_scan_gives_the_same_gradients():
    from mimjax.models import vit

    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    kw = dict(img_size=32, patch_size=8, depth=2, dtype=jnp.bfloat16)
    base = vit("vit_tiny_patch16", **kw)
    params = base.init(jax.random.key(0), x)

    def grads(model):
        return jax.jit(jax.grad(lambda p: (model.apply(p, x) ** 2).mean()))(params)

    want = grads(base)
    for over in (dict(remat=True), dict(scan=True), dict(scan=True, remat=True)):
        got = grads(vit("vit_tiny_patch16", **kw, **over))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == jnp.float32
            np.testing.assert_allclose(g, w, atol=2e-2 * float(np.abs(w).max()) + 1e-7)
