import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import masking


def numpy_gpa_scores(attn, head):
    a = attn.mean(1) if head is None else attn[:, head]
    r = a.sum(axis=1)[:, 1:]  # sum over queries i, drop cls key
    lo, hi = r.min(1, keepdims=True), r.max(1, keepdims=True)
    return (r - lo) / (hi - lo)


@pytest.mark.parametrize("head", [11, 0, -1, None])
def test_gpa_scores_match_numpy(head):
    attn = np.random.default_rng(0).normal(size=(3, 12, 17, 17)).astype(np.float32)
    np.testing.assert_allclose(masking.gpa_scores(attn, head=head), numpy_gpa_scores(attn, head), atol=1e-5)


def test_gpa_scores_constant_attention_gives_zeros_not_nan():
    g = masking.gpa_scores(jnp.full((2, 4, 10, 10), 3.0), head=1)
    np.testing.assert_array_equal(g, 0.0)


def python_counts(t, n, ratio, hard, soft):
    """docs/method.md §3 in float64 Python, as the authors' code computes it."""
    m = n - int(n * (1 - ratio))
    a = hard[0] + t * (hard[1] - hard[0])
    s = soft[0] + t * (soft[1] - soft[0])
    nh, ns = int(m * a), int(m * s)
    if nh + ns > m:
        ns = m - nh
    return nh, ns, m - nh - ns


def test_mask_counts_spec_numbers_and_float64_agreement():
    f = jax.jit(lambda t: masking.mask_counts(t, 196))
    assert tuple(map(int, f(0 / 200))) == (0, 44, 103)
    assert tuple(map(int, f(100 / 200))) == (36, 22, 89)
    assert tuple(map(int, f(199 / 200))) == (73, 0, 74)
    for n, ratio, hard, soft, epochs in [(196, 0.75, (0.0, 0.5), (0.3, 0.0), 200),
                                         (196, 0.75, (0.2, 0.6), (0.3, 0.3), 100),
                                         (64, 0.6, (0.1, 0.9), (0.5, 0.2), 300),
                                         (256, 0.9, (0.0, 1.0), (1.0, 0.0), 400)]:
        g = jax.jit(lambda t: masking.mask_counts(t, n, ratio, hard, soft))
        got = np.array(jax.vmap(g)(jnp.arange(epochs) / epochs)).T
        want = np.array([python_counts(e / epochs, n, ratio, hard, soft) for e in range(epochs)])
        np.testing.assert_array_equal(got, want)


def check_mask_invariants(m, n, num_mask):
    mask, keep, restore = map(np.asarray, m)
    assert mask.dtype == bool and keep.dtype == np.int32 and restore.dtype == np.int32
    assert (mask.sum(1) == num_mask).all()
    for i in range(mask.shape[0]):
        assert not mask[i, keep[i]].any() and len(set(keep[i])) == n - num_mask
        np.testing.assert_array_equal(np.sort(restore[i]), np.arange(n))
        shuffle = np.argsort(restore[i])  # [visible..., masked...]
        np.testing.assert_array_equal(shuffle[: n - num_mask], keep[i])


def test_gpa_mask_invariants_and_hard_patches_always_masked():
    rng = np.random.default_rng(1)
    scores = jnp.asarray(rng.uniform(size=(16, 196)), jnp.float32)
    for t in [0.0, 0.3, 0.5, 0.99, 1.0]:
        m = jax.jit(lambda k, s, p: masking.gpa_mask(k, s, p))(jax.random.key(0), scores, t)
        check_mask_invariants(m, 196, 147)
        n_hard = int(masking.mask_counts(t, 196)[0])
        top = np.argsort(-np.asarray(scores), axis=1)[:, :n_hard]
        assert np.take_along_axis(np.asarray(m.mask), top, 1).all()


def exact_inclusion(w, k):
    """P(patch j in a without-replacement draw of k items with prob proportional to w)."""
    n, total = len(w), np.zeros(len(w))
    for seq in itertools.permutations(range(n), k):
        p, left = 1.0, w.sum()
        for j in seq:
            p *= w[j] / left
            left -= w[j]
        total[list(seq)] += p
    return total


def test_soft_picks_follow_without_replacement_law():
    g = np.array([0.0, 0.1, 0.2, 0.45, 0.7, 1.0], np.float32)  # N = 6, g = 0 never drawn
    b = 40000
    # ratio 0.5 -> M = 3; soft share 1 -> all 3 masked patches are soft picks.
    m = masking.gpa_mask(jax.random.key(7), jnp.tile(g, (b, 1)), 0.0, mask_ratio=0.5,
                         hard=(0.0, 0.0), soft=(1.0, 1.0))
    freq = np.asarray(m.mask).mean(0)
    want = exact_inclusion(g.astype(np.float64), 3)
    assert freq[0] == 0
    np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(0.25 / b))


def test_random_share_is_uniform_outside_hard_picks():
    b, n = 20000, 16
    g = np.linspace(0, 1, n, dtype=np.float32)  # the 4 highest are hard at t=1 with hard (0, 0.5)
    m = masking.gpa_mask(jax.random.key(3), jnp.tile(g, (b, 1)), 1.0, mask_ratio=0.5,
                         hard=(0.0, 0.5), soft=(0.0, 0.0))
    freq = np.asarray(m.mask).mean(0)
    np.testing.assert_array_equal(freq[-4:], 1.0)
    # 8 masked: 4 hard + 4 uniform over the other 12 patches -> 1/3 each.
    np.testing.assert_allclose(freq[:-4], 1 / 3, atol=4 * np.sqrt(2 / 9 / b))


def test_random_mask_uniform_and_exact_count():
    m = masking.random_mask(jax.random.key(0), 20000, 10, 0.75)
    check_mask_invariants(jax.tree.map(lambda a: a[:50], m), 10, 8)  # int(10 * 0.25) = 2 kept
    np.testing.assert_allclose(np.asarray(m.mask).mean(0), 0.8, atol=4 * np.sqrt(0.16 / 20000))


def test_jit_vmap_equivalence_and_determinism():
    scores = jax.random.uniform(jax.random.key(0), (4, 3, 49))  # [devices, B, N]
    keys = jax.random.split(jax.random.key(1), 4)
    f = lambda k, s: masking.gpa_mask(k, s, jnp.float32(0.4))
    vm = jax.jit(jax.vmap(f))(keys, scores)
    for i in range(4):
        one = f(keys[i], scores[i])
        for a, b in zip(one, vm):
            np.testing.assert_array_equal(a, b[i])
    again = jax.jit(jax.vmap(f))(keys, scores)
    np.testing.assert_array_equal(vm.mask, again.mask)
    other = jax.vmap(f)(jax.random.split(jax.random.key(2), 4), scores)
    assert not np.array_equal(vm.mask, other.mask)


def test_traced_progress_equals_python_progress():
    scores = jax.random.uniform(jax.random.key(0), (2, 196))
    a = masking.gpa_mask(jax.random.key(5), scores, 0.5)
    b = jax.jit(masking.gpa_mask)(jax.random.key(5), scores, jnp.float32(0.5))
    np.testing.assert_array_equal(a.mask, b.mask)


def test_high_mask_and_cls_attention():
    attn = np.random.default_rng(0).normal(size=(2, 3, 10, 10)).astype(np.float32)
    s = masking.cls_attention_scores(attn)
    p = np.exp(attn) / np.exp(attn).sum(-1, keepdims=True)
    np.testing.assert_allclose(s, p[:, :, 0, 1:].mean(1), rtol=1e-5)
    m = masking.high_mask(s, 0.5)  # N = 9 -> keep 4, mask 5
    top = np.argsort(-np.asarray(s), 1)[:, :5]
    for i in range(2):
        assert set(np.flatnonzero(m.mask[i])) == set(top[i])


@pytest.mark.parametrize("call, match", [
    (lambda: masking.random_mask(jax.random.key(0), 2, 16, 1.0), r"mask_ratio must be in \(0, 1\), got 1.0"),
    (lambda: masking.random_mask(jax.random.key(0), 2, 16, -0.2), r"mask_ratio must be in \(0, 1\), got -0.2"),
    (lambda: masking.gpa_scores(jnp.zeros((2, 10, 10))), r"attn must be \[B, H, T, T\].*shape \(2, 10, 10\)"),
    (lambda: masking.gpa_scores(jnp.zeros((2, 12, 10, 10)), head=12), r"head must be in \[-12, 12\).*got 12"),
    (lambda: masking.gpa_mask(jax.random.key(0), jnp.zeros((16,)), 0.0), r"scores must be \[B, N\]"),
    (lambda: masking.mask_counts(0.0, 196, hard=(0.0, 1.5)), r"hard must be in \[0, 1\], got 1.5"),
    (lambda: jax.jit(lambda r: masking.random_mask(jax.random.key(0), 2, 16, r))(0.5), "mask_ratio must be a Python number"),
    (lambda: masking.mask_counts(jnp.zeros(3), 196), "progress must be a scalar"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def numpy_logits(q, k):
    """Pre-softmax logits [B, H, T, T] of q, k [B, T, H, hd], float64."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    return np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])


def random_qk(dtype=np.float32, shape=(3, 17, 12, 16)):
    rng = np.random.default_rng(1)
    q, k = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype)


# g is min-max scaled to [0, 1] per image: an absolute error on g is relative to the range of r.
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("head", [11, 0, -1, None])
def test_gpa_scores_from_qk_match_the_logits_path(head, dtype):
    q, k = random_qk(dtype)
    g = masking.gpa_scores_from_qk(q, k, head=head)
    assert g.dtype == jnp.float32 and g.shape == (3, 16)
    # bf16 inputs: the logits of those very bf16 values, in float64; the scores are computed
    # in float32 whatever the input dtype, so the same 1e-5 holds.
    want = numpy_gpa_scores(numpy_logits(q, k), head)
    np.testing.assert_allclose(g, want, atol=1e-5)
    np.testing.assert_allclose(g, masking.gpa_scores(numpy_logits(q, k).astype(np.float32), head=head), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cls_attention_scores_from_qk_match_the_logits_path(dtype):
    q, k = random_qk(dtype)
    s = masking.cls_attention_scores_from_qk(q, k)
    a = numpy_logits(q, k)[:, :, 0]  # the cls query's row [B, H, T]
    p = np.exp(a - a.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True))[:, :, 1:].mean(1)
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s, masking.cls_attention_scores(numpy_logits(q, k).astype(np.float32)),
                               rtol=1e-5, atol=1e-7)


def test_scores_from_qk_check_their_arguments():
    q, k = random_qk(shape=(2, 5, 4, 8))
    g = masking.gpa_scores_from_qk(jnp.ones_like(q), k, head=1)  # every query the same: r_j ~ k_j . const
    assert g.shape == (2, 4)
    np.testing.assert_array_equal(masking.gpa_scores_from_qk(q, jnp.ones_like(k), head=1), 0.0)  # constant r, no NaN
    with pytest.raises(ValueError, match="head must be in"):
        masking.gpa_scores_from_qk(q, k, head=4)
    with pytest.raises(ValueError, match="same shape"):
        masking.gpa_scores_from_qk(q, k[:, :4], head=0)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        masking.cls_attention_scores_from_qk(q, k, num_prefix_tokens=4)
