"""The masking library on values that make no sense (issue 25): wrong shapes and sizes are a
ValueError naming the value outside jit; non-finite scores have one documented behaviour
inside jit as outside: they count as the lowest score."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import masking


def test_random_mask_with_a_negative_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got -1"):
        masking.random_mask(jax.random.key(0), -1, 16)


def test_gpa_scores_from_qk_given_heads_first_is_a_clear_error():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 4, 17, 8)), jnp.float32)  # [B, H, T, hd]: the wrong layout
    with pytest.raises(ValueError, match=r"\[B, T, H, hd\].*\(2, 4, 17, 8\).*look swapped"):
        masking.gpa_scores_from_qk(q, q, head=0)
    with pytest.raises(ValueError, match="look swapped"):
        masking.cls_attention_scores_from_qk(q, q)
    g = masking.gpa_scores_from_qk(q.transpose(0, 2, 1, 3), q.transpose(0, 2, 1, 3), head=0)
    assert g.shape == (2, 16)
    # more heads than tokens on a square grid (a big teacher on tiny images) stays allowed
    assert masking.gpa_scores_from_qk(jnp.ones((1, 5, 12, 8)), jnp.ones((1, 5, 12, 8)), head=0).shape == (1, 4)


def test_nan_progress_outside_jit_is_an_error_and_inside_counts_as_zero():
    with pytest.raises(ValueError, match=r"progress must be a finite number in \[0, 1\], got nan"):
        masking.mask_counts(float("nan"), 196)
    traced = jax.jit(lambda t: masking.mask_counts(t, 196))(jnp.float32(jnp.nan))
    assert [int(x) for x in traced] == [int(x) for x in masking.mask_counts(0.0, 196)]


def test_gpa_scores_with_an_infinite_logit_give_it_the_lowest_score_not_all_nan():
    rng = np.random.default_rng(1)
    attn = rng.normal(size=(2, 1, 17, 17)).astype(np.float32)
    attn[0, 0, 3, 5] = np.inf  # one overflowing logit: key 5's column sum is inf
    attn[1, 0, 2, 7] = np.nan
    g = np.asarray(jax.jit(lambda a: masking.gpa_scores(a, head=0))(jnp.asarray(attn)))
    assert np.isfinite(g).all() and g.min() >= 0 and g.max() <= 1
    assert g[0, 4] == 0 and g[1, 6] == 0  # (the prefix token is dropped: key j is patch j - 1)
    assert g[0].max() == 1 and g[1].max() == 1  # the finite ones keep their [0, 1] scaling


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -5.0])
def test_gpa_and_high_masks_treat_non_finite_and_negative_scores_as_lowest(bad):
    n, b = 16, 64
    scores = np.tile(np.linspace(0.05, 1.0, n, dtype=np.float32), (b, 1))
    zero = scores.copy()
    scores[:, 15], zero[:, 15] = bad, 0.0  # the patch that would be the highest
    key = jax.random.key(0)
    gpa = jax.jit(lambda s: masking.gpa_mask(key, s, 1.0, mask_ratio=0.5, hard=(0.5, 0.5), soft=(0.5, 0.5)))
    m = gpa(jnp.asarray(scores))
    assert (np.asarray(m.mask).sum(1) == 8).all()
    assert np.asarray(m.mask)[:, 11:15].all()  # the 4 highest finite scores are the hard picks
    for got, want in zip(m, gpa(jnp.asarray(zero))):  # exactly as a score of 0, the lowest
        np.testing.assert_array_equal(got, want)
    if bad != -5.0:  # high masking: the M highest; a non-finite score counts as the lowest
        hm = np.asarray(jax.jit(lambda s: masking.high_mask(s, 0.5))(jnp.asarray(scores)).mask)
        assert not hm[:, 15].any() and hm[:, 7:15].all()
