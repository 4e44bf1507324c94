"""mimjax's CPU fast-math flags: set on import, opt-out and user flags respected, and NaN/Inf
semantics kept (a non-finite loss must still be caught)."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import mimjax


def flags_after_import(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MIMJAX_CPU_FAST_MATH")}
    out = subprocess.run([sys.executable, "-c", "import os, mimjax; print(os.environ.get('XLA_FLAGS', ''))"],
                         env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_sets_the_flags_unless_told_not_to():
    assert flags_after_import() == mimjax.CPU_FAST_MATH_FLAGS
    assert flags_after_import(XLA_FLAGS="--xla_force_host_platform_device_count=2") == (
        "--xla_force_host_platform_device_count=2 " + mimjax.CPU_FAST_MATH_FLAGS)
    assert flags_after_import(MIMJAX_CPU_FAST_MATH="0") == ""
    assert flags_after_import(XLA_FLAGS="--xla_cpu_enable_fast_math=false") == "--xla_cpu_enable_fast_math=false"


def test_non_finite_values_survive_fast_math():
    assert "xla_cpu_enable_fast_math=true" in os.environ["XLA_FLAGS"]  # this process runs with them
    x = jnp.array([1.0, 0.0, jnp.inf, jnp.nan, -1.0])
    finite, inv, ex, lg, mx = jax.jit(lambda x: (jnp.isfinite(x), 1.0 / x, jnp.exp(x), jnp.log(x), jnp.max(x)))(x)
    np.testing.assert_array_equal(finite, [True, True, False, False, True])
    np.testing.assert_array_equal(inv[:3], [1.0, np.inf, 0.0])
    assert np.isnan(inv[3]) and np.isnan(ex[3]) and np.isnan(lg[4]) and np.isnan(mx)
    assert lg[1] == -np.inf and ex[2] == np.inf
