"""The scanned block stack computes what the unrolled one does, with the same parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax.models.layers import Transformer

X = jax.random.normal(jax.random.key(0), (2, 5, 32))  # [B, T, D]


@pytest.fixture(scope="module")
def params():
    return Transformer(4, 32, 4).init(jax.random.key(1), X)


def test_scan_keeps_the_parameter_layout(params):
    scanned = Transformer(4, 32, 4, scan=True).init(jax.random.key(1), X)
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    assert shapes(scanned) == shapes(params)  # block_0 ... block_3, unstacked


@pytest.mark.parametrize("remat", [False, True])
def test_scan_equals_the_unrolled_stack(params, remat):
    unrolled, scanned = Transformer(4, 32, 4), Transformer(4, 32, 4, remat=remat, scan=True)
    np.testing.assert_allclose(scanned.apply(params, X), unrolled.apply(params, X), atol=2e-5)
    loss = lambda m: lambda p: (m.apply(p, X) ** 2).sum()  # noqa: E731
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                 jax.grad(loss(unrolled))(params), jax.grad(loss(scanned))(params))


@pytest.mark.parametrize("block", [0, 2, 3])
@pytest.mark.parametrize("head", [1, None])
def test_scan_qk_equals_the_unrolled_stack(params, block, head):
    want_q, want_k = Transformer(4, 32, 4).apply(params, X, block, head, method="qk")
    got_q, got_k = Transformer(4, 32, 4, scan=True).apply(params, X, block, head, method="qk")
    assert got_q.shape == got_k.shape == (2, 5, 1 if head is not None else 4, 8)
    np.testing.assert_allclose(got_q, want_q, atol=2e-5)
    np.testing.assert_allclose(got_k, want_k, atol=2e-5)


def test_scan_drop_path_is_random_in_training_and_off_in_eval(params):
    m = Transformer(4, 32, 4, drop_path=0.5, scan=True)
    eval_x = m.apply(params, X)
    np.testing.assert_allclose(eval_x, Transformer(4, 32, 4).apply(params, X), atol=2e-5)
    a = m.apply(params, X, deterministic=False, rngs={"dropout": jax.random.key(3)})
    b = m.apply(params, X, deterministic=False, rngs={"dropout": jax.random.key(3)})
    c = m.apply(params, X, deterministic=False, rngs={"dropout": jax.random.key(4)})
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - eval_x).max()) > 1e-3 and float(jnp.abs(a - c).max()) > 1e-3


@pytest.mark.parametrize("arch", ["mae", "simmim"])
def test_scanned_model_from_config_gives_the_same_loss_and_teacher_qk(arch, tiny_config):
    from mimjax import masking
    from mimjax.models import init_model, model_from_config

    mc = tiny_config(model=dict(arch=arch, gpa_head=True)).model
    unrolled = model_from_config(mc)
    mc.scan = True
    scanned = model_from_config(mc)
    assert scanned.encoder.scan
    params = init_model(unrolled, jax.random.key(0), batch_size=2)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    mask = masking.random_mask(jax.random.key(2), 2, 16, 0.75)
    g = jax.random.uniform(jax.random.key(3), (2, 16))
    want, got = (m.apply({"params": params}, images, mask, gpa_target=g, train=False) for m in (unrolled, scanned))
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["pred"], want["pred"], atol=1e-4)
    qk = [m.encoder.apply({"params": params["encoder"]}, images, block=1, head=0, method="teacher_qk")
          for m in (unrolled, scanned)]
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, atol=1e-4), qk[1], qk[0])


@pytest.mark.parametrize("value,remat,backend,want", [
    ("auto", True, "tpu", True), ("auto", False, "tpu", False),  # a TPU step with remat is scanned
    ("auto", True, "gpu", False), ("auto", True, "cpu", False), ("AUTO", True, "tpu", True),
    (True, False, "cpu", True), (False, True, "tpu", False), ("true", False, "cpu", True), ("False", True, "tpu", False)])
def test_resolve_scan(value, remat, backend, want):
    from mimjax.models.precision import resolve_scan, target_backend

    assert resolve_scan(value, remat, backend=backend) is want
    with target_backend(backend):  # the platform a model is built for, as `mimjax plan` sets it
        assert resolve_scan(value, remat) is want


def test_a_bad_scan_value_is_one_config_line(tiny_config):
    from mimjax.train import config as config_lib

    c = tiny_config(total_steps=2)
    c.model.scan = "sometimes"
    with pytest.raises(config_lib.ConfigError, match=r"^config\.model\.scan='sometimes': expected True, False or 'auto'$"):
        config_lib.validate(c)


@pytest.mark.parametrize("remat", [False, True])
def test_scan_auto_scans_every_stack_of_a_tpu_step_with_remat(tiny_config, remat):
    """The recipes' "auto": on TPU with remat the encoder, decoder, GPA head and a checkpoint
    teacher are each one `lax.scan`; without remat (or on the CPU) nothing is."""
    from mimjax import masking
    from mimjax.models import init_model, model_from_config
    from mimjax.models.precision import target_backend
    from mimjax.train import recipes, teacher

    c = tiny_config(gpa=True, model=dict(gpa_head=True, remat=remat))
    assert recipes.pretraining("vit_base_patch16").model.scan == "auto"
    c.model.scan = "auto"
    c.teacher.source, c.teacher.name = "checkpoint", "vit_tiny_patch16"
    images, g = jnp.zeros((2, 32, 32, 3)), jnp.ones((2, 16))
    mask = masking.random_mask(jax.random.key(2), 2, 16, 0.75)
    for backend, want in (("tpu", remat), ("cpu", False)):
        with target_backend(backend):
            model = model_from_config(c.model)
            params = jax.eval_shape(lambda: init_model(model, jax.random.key(0), batch_size=2))
            jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, images, mask, gpa_target=g, train=False))(params))
            t = teacher.teacher_model(c, model.encoder)
        stacks = 3  # encoder, decoder, GPA head
        assert model.encoder.scan is want and t.scan is want
        assert jaxpr.count(" scan[") == (stacks if want else 0), backend
