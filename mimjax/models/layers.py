"""Transformer building blocks shared by the ViT encoder, the MAE decoder and the GPA head.

Initialisation follows MAE (`models_mae.py::_init_weights`): xavier-uniform linear layers
with zero bias, LayerNorm (1, 0) with eps 1e-6. The fused qkv Linear of timm/MAE is held
here as three `DenseGeneral` kernels [D, H, hd]; to keep MAE's init bound
sqrt(6 / (D + 3D)) each of them uses variance_scaling(0.5, fan_avg) (fan_avg = D here).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
# Same bound as xavier on the fused [3D, D] qkv matrix of timm/MAE.
qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
# Always float32 (dtype=None: the type of its float32 input and parameters), whatever the
# model's compute dtype: statistics, normalisation and output (the mixed-precision policy).
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6)


# --- Mixed precision ---------------------------------------------------------------------
# The policy of `model.dtype` (`dtype` of every module here), one rule: a half dtype
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
# convert -> float32 op -> convert on CPU. See README "Performance", bf16.

COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "auto")

# The platform the model is built and traced for: the running backend, or, inside
# `target_backend`, the accelerator `mimjax plan` compiles for from a CPU machine, so that the
# dtype policy and the kernels chosen below are the target's, not the planning host's.
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


def posemb_sincos_2d(grid_h: int, grid_w: int, dim: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of MAE (`get_2d_sincos_pos_embed`).

    Returns float32 [1 + grid_h * grid_w, dim] (a zero row for cls first when cls_token),
    patches in row-major order. Half the channels encode the column (w), half the row (h),
    in that order, as MAE does.
    """
    if dim % 4:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # [D/4]

    def emb_1d(pos):  # pos [M] -> [M, D/2]
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    emb = np.concatenate([emb_1d(gw), emb_1d(gh)], axis=1)  # [h*w, D]
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb.astype(np.float32)


def patchify(images, patch_size: int):
    """[B, H, W, C] -> [B, N, p*p*C], patches row-major, pixels in (p, q, c) order (MAE)."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class PatchEmbed(nn.Module):
    """The ViT patch embedding, a p x p convolution with stride p, computed as patchify +
    one matmul: the same parameters as `nn.Conv` (`kernel` [p, p, C, D], same init; `bias`
    [D]) and the same result up to float rounding. Why not the conv: on the CPU backend XLA
    computes the conv's kernel gradient in an MAE step (the conv output gathered to the
    visible patches) as a generic dilated convolution, 3.1 s of a 15 s ViT-S/16 step at
    batch 32; as a matmul it is one more dense product (README, Performance)."""

    patch_size: int
    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):  # [B, H, W, C] -> [B, N, D], patches row-major
        p, c = self.patch_size, images.shape[-1]
        # MAE's xavier on the flattened [D, p*p*C] weight is fan_avg over (p*p*C, D).
        kernel = self.param("kernel", nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1), (p, p, c, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        x = patchify(images, p)  # [B, N, p*p*C]; (p, q, c) order = the kernel's row-major flattening
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel.reshape(p * p * c, self.width), bias, dtype=jnp.float32)
        # [B, N, D] float32 (the product in `dtype`, see "Mixed precision")
        return mixed_dot_general(self.dtype)(x, kernel, (((2,), (0,)), ((), ()))) + bias


ATTENTION_IMPLEMENTATIONS = ("auto", "explicit", "xla", "cudnn")


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v kernels [D, H, hd].

    Modes (static): plain (no weights kept); `return_logits` (also returns the pre-softmax
    logits of `logits_head`, or of all heads); `qk_only` (computes only q and k and returns
    just the logits: what a GPA teacher needs from its last block). With `qk`, those two
    modes return the pair (q, k), each [B, T, 1 or H, hd] float32, of `logits_head` (or
    all heads) instead of the logits [B, 1 or H, T, T]: a GPA teacher needs only column sums
    of q k^T, O(T hd) from q and k (`masking.gpa_scores_from_qk`), never the T x T map.

    `implementation` (static) picks the plain mode's kernel: "auto" is
    `jax.nn.dot_product_attention` (XLA's choice) on GPU/TPU and, on the CPU backend, an
    explicit softmax in head-major layout ([B, H, T, hd], each head's T x T product a
    contiguous batched matmul), measured 21% less time for a ViT-S attention layer's
    forward + backward at batch 32 on 2 cores (bench/README.md); "explicit" is that
    softmax everywhere; "xla" / "cudnn" force `jax.nn.dot_product_attention`'s
    implementation (cuDNN flash attention: GPU, bf16/fp16).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    return_logits: bool = False
    qk_only: bool = False
    logits_head: int | None = None
    implementation: str = "auto"  # auto | explicit | xla | cudnn
    qk: bool = False  # return (q, k) of the wanted head(s) instead of their logits

    @nn.compact
    def __call__(self, x):  # x [B, T, D]
        dim = x.shape[-1]
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {self.implementation!r}: expected one of "
                             f"{ATTENTION_IMPLEMENTATIONS}")
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={self.num_heads}")
        head_dim = dim // self.num_heads
        mixed = mixed_dot_general(self.dtype)  # products in `dtype`, float32 results ("Mixed precision")
        # The per-head T x T products (q k^T, weights @ v): XLA:CPU computes batched bf16 products
        # in float32 (it converts the operands back; checked with jax 0.10.2 and 0.12.0.1), so on
        # the CPU backend they stay float32 rather than pay a float32 -> bf16 -> float32 round trip.
        attn_dot = jax.lax.dot_general if current_platform() == "cpu" else mixed
        dense = functools.partial(
            nn.DenseGeneral, features=(self.num_heads, head_dim), dtype=jnp.float32, dot_general=mixed,
            kernel_init=qkv_init, bias_init=nn.initializers.zeros)
        q = dense(name="query")(x)  # [B, T, H, hd] float32
        k = dense(name="key")(x)
        scale = head_dim ** -0.5

        def attn_logits(qh, kh):  # [B, T, h, hd] x2 -> [B, h, T, T] float32
            qh, kh = qh.transpose(0, 2, 1, 3), kh.transpose(0, 2, 1, 3)  # head-major [B, h, T, hd]
            return jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32,
                              _dot_general=attn_dot) * scale

        one_head = slice(self.logits_head, self.logits_head + 1) if self.logits_head is not None else slice(None)
        if self.qk_only:  # a teacher's last block: only q and k (or q.k) of the wanted head(s)
            if self.qk:
                return None, (q[:, :, one_head], k[:, :, one_head])
            return None, attn_logits(q[:, :, one_head], k[:, :, one_head])
        v = dense(name="value")(x)
        logits = (q[:, :, one_head], k[:, :, one_head]) if self.return_logits and self.qk else None
        want_logits = self.return_logits and not self.qk
        explicit = self.implementation == "explicit" or (self.implementation == "auto" and
                                                         current_platform() == "cpu")
        if want_logits or explicit:
            full = attn_logits(q, k)  # [B, H, T, T]
            logits = full[:, one_head] if want_logits else logits
            weights = jax.nn.softmax(full, axis=-1)  # float32 softmax
            out = jnp.einsum("bhqk,bhkd->bhqd", weights, v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32,
                             _dot_general=attn_dot).transpose(0, 2, 1, 3)
        else:
            impl = None if self.implementation == "auto" else self.implementation
            q, k, v = (a.astype(self.dtype) for a in (q, k, v))  # cuDNN flash attention takes bf16 / fp16
            out = jax.nn.dot_product_attention(q, k, v, implementation=impl)  # [B, T, H, hd], fused
        out = nn.DenseGeneral(dim, axis=(-2, -1), dtype=jnp.float32, dot_general=mixed, kernel_init=xavier_uniform,
                              bias_init=nn.initializers.zeros, name="out")(out)
        return out, logits


class Mlp(nn.Module):
    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # x [B, T, D] -> [B, T, D]
        dim = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=jnp.float32, dot_general=mixed_dot_general(self.dtype),
                                  kernel_init=xavier_uniform, bias_init=nn.initializers.zeros)
        x = dense(self.hidden_dim, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # exact (erf) GELU, as timm/MAE/PyTorch; float32
        return dense(dim, name="fc2")(x)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's drop_path); identity when deterministic. The
    rate may be a traced scalar (a scanned stack of blocks with increasing rates)."""

    rate: Any = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        alive = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(alive, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block (timm `Block`): x + attn(norm1(x)); x + mlp(norm2(x)).

    Returns (x, logits); logits is None unless the attention mode asks for them ((q, k)
    instead with `qk`). With `qk_only` it returns (None, logits) after computing q and k:
    nothing after that is run.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    drop_path: float = 0.0
    deterministic: bool = True
    return_logits: bool = False
    qk_only: bool = False
    logits_head: int | None = None
    attention: str = "auto"  # the attention kernel (`Attention.implementation`)
    qk: bool = False  # (q, k) of the wanted head(s) instead of their logits (`Attention`)

    @nn.compact
    def __call__(self, x):  # x [B, T, D]
        dim = x.shape[-1]
        y, logits = Attention(self.num_heads, self.dtype, self.return_logits, self.qk_only, self.logits_head,
                              self.attention, self.qk, name="attn")(LayerNorm(name="norm1")(x))
        if self.qk_only:
            return None, logits
        x = x + DropPath(self.drop_path)(y, self.deterministic)
        y = Mlp(int(dim * self.mlp_ratio), self.dtype, name="mlp")(LayerNorm(name="norm2")(x))
        x = x + DropPath(self.drop_path)(y, self.deterministic)
        return x, logits


class Transformer(nn.Module):
    """A stack of `depth` blocks (params `block_0` ... `block_{depth-1}`), no final norm.

    attn_block: if set, also return the pre-softmax logits of that block (0-indexed),
      [B, H, T, T], or [B, 1, T, T] when attn_head picks one head. Only that block keeps
      its attention weights; all others use the fused kernel.
    stop_at_attn: return (None, logits) right after block attn_block's q and k.
    qk: instead of the logits, return that block's (q, k), each [B, T, H, hd] or
      [B, T, 1, hd] with attn_head, float32 (the logits are q k^T * hd^-0.5):
      with stop_at_attn, (None, (q, k)). What a GPA teacher needs: its scores are O(T hd)
      from q and k (`masking.gpa_scores_from_qk`); no [B, H, T, T] is formed.
    remat: rematerialise each block in the backward pass (memory for compute).
    drop_path: maximum stochastic-depth rate, linearly increasing over blocks (timm).
    scan: run the blocks as one `lax.scan` over their stacked parameters, so XLA compiles
      one block instead of `depth` (compile time and code size for ViT-L/H). Parameters
      keep the same `block_{i}` layout (checkpoints, export and sharding rules do not
      change); they are stacked inside the step. Same outputs as the unrolled stack
      (up to float reassociation); dropout draws its randomness differently.
    """

    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    drop_path: float = 0.0
    scan: bool = False
    attention: str = "auto"  # the attention kernel (`Attention.implementation`)

    @nn.compact
    def __call__(self, x, *, attn_block: int | None = None, attn_head: int | None = None,
                 stop_at_attn: bool = False, qk: bool = False, deterministic: bool = True):
        if attn_block is not None and not 0 <= attn_block < self.depth:
            raise ValueError(f"attn_block must be in [0, {self.depth}), got {attn_block}")
        if attn_head is not None and not 0 <= attn_head < self.num_heads:
            raise ValueError(f"attn_head must be in [0, {self.num_heads}), got {attn_head}")
        if stop_at_attn and attn_block is None:
            raise ValueError("stop_at_attn=True needs attn_block")
        if qk and attn_block is None:
            raise ValueError("qk=True needs attn_block")
        if self.scan:
            return self._scanned(x, attn_block, attn_head, stop_at_attn, qk, deterministic)
        block_cls = nn.remat(Block) if self.remat else Block
        logits = None
        for i in range(self.depth):
            wanted = i == attn_block
            x, block_logits = block_cls(
                self.num_heads, self.mlp_ratio, self.dtype, self._rate(i), deterministic,
                return_logits=wanted, qk_only=wanted and stop_at_attn,
                logits_head=attn_head if wanted else None, attention=self.attention, qk=wanted and qk,
                name=f"block_{i}")(x)
            if wanted:
                logits = block_logits
                if stop_at_attn:
                    return None, logits
        return x, logits

    def _rate(self, i):
        return self.drop_path * i / max(self.depth - 1, 1)

    def _scanned(self, x, attn_block, attn_head, stop_at_attn, qk, deterministic):
        def block(rate=0.0, **mode):  # an unbound Block, applied to explicit params
            return Block(self.num_heads, self.mlp_ratio, self.dtype, rate, deterministic, parent=None,
                         attention=self.attention, **mode)

        params = [self.param(f"block_{i}", lambda key, shape: block().init(key, jnp.zeros(shape, x.dtype))["params"],
                             x.shape) for i in range(self.depth)]
        keys = jax.random.split(self.make_rng("dropout") if not deterministic else jax.random.key(0), self.depth)

        def body(h, xs):  # h [B, T, D]; xs: one block's params, drop-path rate and key
            p, rate, key = xs
            h, _ = block(rate).apply({"params": p}, h, rngs={"dropout": key})
            return h, None

        body = jax.checkpoint(body) if self.remat else body

        def run(h, lo, hi):  # blocks lo .. hi-1 as one scan
            if lo >= hi:
                return h
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *params[lo:hi])  # leaves [hi-lo, ...]
            rates = jnp.array([self._rate(i) for i in range(lo, hi)], jnp.float32)
            return jax.lax.scan(body, h, (stacked, rates, keys[lo:hi]))[0]

        if attn_block is None:
            return run(x, 0, self.depth), None
        x = run(x, 0, attn_block)
        j = attn_block
        x, logits = block(self._rate(j), return_logits=True, qk_only=stop_at_attn, logits_head=attn_head,
                          qk=qk).apply(
            {"params": params[j]}, x, rngs={"dropout": keys[j]})
        if stop_at_attn:
            return None, logits
        return run(x, j + 1, self.depth), logits
