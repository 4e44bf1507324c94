"""The mixed-precision policy of `model.dtype` and the platform the model is built for.

`resolve_dtype` names the compute dtype ("auto": bfloat16 on accelerators and on CPUs that
multiply bf16 natively); `resolve_scan` whether the blocks run as one `lax.scan` ("auto": on
TPU with remat); `mixed_dot_general` is the matrix product every layer uses under
it (a custom VJP, so the backward products follow the policy too); `current_platform` /
`target_backend` say which backend's kernels and dtype the model is traced for.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np

# The policy of `model.dtype` (`dtype` of every module in mimjax.models), one rule: a half dtype
# (bfloat16, float16) is the dtype of the *operands of every matrix product* (q/k/v/out
# projections, q k^T and weights @ v, MLP, patch embedding, decoder, GPA head, teacher),
# accumulated and returned in float32 (`preferred_element_type`); everything else
# (parameters, optimizer state, the residual stream, LayerNorm, softmax, GELU, losses, GPA
# scores) is float32. The backward products are half x half -> float32 too (`mixed_dot_general`
# has its own VJP), and the only converts are those of the product operands (fused into the
# op that makes them) and of each float32 weight, once per step. One exception, on the CPU
# backend only: the per-head T x T attention products stay float32, because XLA:CPU computes
# batched bf16 products in float32 anyway (it would convert the operands straight back).
#
# Why not "activations in bf16" (flax's `dtype=bfloat16`): a bf16 x bf16 -> bf16 product has
# no native kernel on XLA:CPU (jax 0.10.2 upcasts it to a float32 dot plus converts), JAX's
# transpose of a product whose output is float32 multiplies the float32 cotangent by the
# half operand (a mixed, float32 product), and every elementwise op in bf16 runs as
# convert -> float32 op -> convert on CPU. See bench/README.md, "bf16 (mixed precision)".

COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "auto")

# The platform the model is built and traced for: the running backend, or, inside
# `target_backend`, the accelerator `mimjax plan` compiles for from a CPU machine, so that the
# dtype policy and the attention kernels (`layers.Attention`) are the target's, not the planning host's.
_TARGET_BACKEND = contextvars.ContextVar("mimjax_target_backend", default=None)


def current_platform() -> str:
    """"cpu" | "gpu" | "tpu": `target_backend`'s platform if one is set, else JAX's default."""
    return _TARGET_BACKEND.get() or jax.default_backend()


@contextlib.contextmanager
def target_backend(platform: str):
    """Build and trace models for `platform` ("cpu" | "gpu" | "tpu") within this block."""
    if platform not in ("cpu", "gpu", "tpu"):
        raise ValueError(f"target platform {platform!r}: expected cpu, gpu or tpu")
    token = _TARGET_BACKEND.set(platform)
    try:
        yield
    finally:
        _TARGET_BACKEND.reset(token)


def cpu_has_native_bf16() -> bool:
    """Whether this host's CPU multiplies bf16 natively (x86 avx512_bf16 or amx_bf16, Arm
    bf16), from /proc/cpuinfo; False where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(name, backend: str | None = None, native_bf16: bool | None = None):
    """The compute dtype `model.dtype` names: "float32" | "bfloat16" | "float16", or "auto":
    bfloat16 on accelerators (GPU, TPU) and on CPUs that multiply bf16 natively
    (`cpu_has_native_bf16`), float32 elsewhere. Accepts a dtype too."""
    if not isinstance(name, str):
        return jnp.dtype(name)
    if name == "auto":
        backend = current_platform() if backend is None else backend
        if backend != "cpu":
            return jnp.dtype(jnp.bfloat16)
        native_bf16 = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        return jnp.dtype(jnp.bfloat16 if native_bf16 else jnp.float32)
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {name!r}: expected one of {COMPUTE_DTYPES}")
    return jnp.dtype(name)


def resolve_scan(value, remat: bool, backend: str | None = None) -> bool:
    """Whether `model.scan` runs the blocks as one `lax.scan`: True | False, or "auto": on TPU
    when the blocks are rematerialised (`remat`). There an unrolled stack costs libtpu the most
    to compile, and a scanned one the same device memory; without remat a scanned stack keeps
    more for the backward pass than XLA does for an unrolled one (docs/scaling.md). Strings as
    the command line gives them ("true", "False") too."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word == "auto":
        return bool(remat) and (current_platform() if backend is None else backend) == "tpu"
    if word in ("true", "false"):
        return word == "true"
    raise ValueError(f"model.scan={value!r}: expected True, False or 'auto'")


def _remaining(n, *removed):
    gone = {int(i) for r in removed for i in r}
    return [i for i in range(n) if i not in gone]


def _cotangent(g, other, this, other_axes, g_this, g_other):
    """d(dot_general) / d(one operand) applied to the cotangent g, float32, as one product of
    g and the other operand (JAX's transpose rule, `lax._dot_general_transpose_lhs`, but with a
    float32 result instead of the operand's dtype). this / other_axes: (batch, kept,
    contracting) axes of the operand and of the other one; g_this / g_other: the axes of g that
    are this operand's / the other's kept axes. Of the two operand orders, the one whose result
    is already in the operand's layout is used (a Dense kernel's gradient needs no transpose):
    XLA:CPU (jax 0.10.2) folds a trailing transpose into a bf16 product after it has decided
    which products its kernels take, and that product then fails at run time ("Unsupported
    element type for DotThunk::Execute: BF16 x BF16 = F32")."""
    (t_batch, t_kept, t_contract), (o_batch, o_kept, o_contract) = this, other_axes
    nb = len(t_batch)
    # The other operand's axes left after the product are its contracting ones, ascending;
    # they pair with this operand's contracting axes.
    t_rest = [t_contract[i] for i in np.argsort(o_contract)]
    g_first = np.argsort(list(t_batch) + list(t_kept) + t_rest)
    o_first = np.argsort(list(t_batch) + t_rest + list(t_kept))
    if (o_first == np.arange(len(o_first))).all() and not (g_first == np.arange(len(g_first))).all():
        out = jax.lax.dot_general(other, g, ((tuple(o_kept), tuple(g_other)), (tuple(o_batch), tuple(range(nb)))),
                                  preferred_element_type=jnp.float32)
        return out
    out = jax.lax.dot_general(g, other, ((tuple(g_other), tuple(o_kept)), (tuple(range(nb)), tuple(o_batch))),
                              preferred_element_type=jnp.float32)
    return out if (g_first == np.arange(len(g_first))).all() else jax.lax.transpose(out, tuple(int(a) for a in g_first))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _mixed_dot(x, w, dims, compute_dtype, x_dtype, w_dtype):
    del x_dtype, w_dtype
    return jax.lax.dot_general(x.astype(compute_dtype), w.astype(compute_dtype), dims,
                               preferred_element_type=jnp.float32)


def _mixed_dot_fwd(x, w, dims, compute_dtype, x_dtype, w_dtype):
    xc, wc = x.astype(compute_dtype), w.astype(compute_dtype)
    return jax.lax.dot_general(xc, wc, dims, preferred_element_type=jnp.float32), (xc, wc)


def _mixed_dot_bwd(dims, compute_dtype, x_dtype, w_dtype, res, g):
    xc, wc = res
    gc = g.astype(compute_dtype)  # the cotangent is rounded once, as torch.autocast's bf16 grads
    (xk, wk), (xb, wb) = dims
    x_axes = (xb, _remaining(xc.ndim, xk, xb), xk)  # (batch, kept, contracting)
    w_axes = (wb, _remaining(wc.ndim, wk, wb), wk)
    nb, nx = len(xb), len(x_axes[1])
    g_x = tuple(range(nb, nb + nx))  # g's axes: batch, x kept, w kept
    g_w = tuple(range(nb + nx, gc.ndim))
    dx = _cotangent(gc, wc, x_axes, w_axes, g_x, g_w)
    dw = _cotangent(gc, xc, w_axes, x_axes, g_w, g_x)
    return dx.astype(x_dtype), dw.astype(w_dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def mixed_dot_general(compute_dtype):
    """A `lax.dot_general` for `nn.Dense(dot_general=...)` / `jnp.einsum(_dot_general=...)`
    under the policy above: float32 (or any) operands are multiplied as `compute_dtype` with
    float32 accumulation and a float32 result; the backward products are compute_dtype x
    compute_dtype -> float32 as well, the cotangents returned in the operands' own dtypes.
    For float32 it is plain `lax.dot_general` (the float32 program is unchanged)."""
    compute_dtype = jnp.dtype(compute_dtype)
    if compute_dtype == jnp.float32:
        return jax.lax.dot_general

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
        del precision, kw  # the half-precision product is the point; no sharding hints are used here
        (lc, rc), (lb, rb) = dimension_numbers
        dims = ((tuple(int(i) for i in lc), tuple(int(i) for i in rc)),
                (tuple(int(i) for i in lb), tuple(int(i) for i in rb)))
        out = _mixed_dot(lhs, rhs, dims, compute_dtype, jnp.dtype(lhs.dtype), jnp.dtype(rhs.dtype))
        return out if preferred_element_type is None else out.astype(preferred_element_type)

    return dot_general
