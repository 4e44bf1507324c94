"""Transformer building blocks shared by the ViT encoder, the MAE decoder and the GPA head.

Initialisation follows MAE (`models_mae.py::_init_weights`): xavier-uniform linear layers
with zero bias, LayerNorm (1, 0) with eps 1e-6. The fused qkv Linear of timm/MAE is held
here as three `DenseGeneral` kernels [D, H, hd]; to keep MAE's init bound
sqrt(6 / (D + 3D)) each of them uses variance_scaling(0.5, fan_avg) (fan_avg = D here).
"""
from __future__ import annotations

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
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6)


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
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel.reshape(p * p * c, self.width), bias, dtype=self.dtype)
        return x @ kernel + bias


ATTENTION_IMPLEMENTATIONS = ("auto", "explicit", "xla", "cudnn")


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v kernels [D, H, hd].

    Modes (static): plain (no weights kept); `return_logits` (also returns the pre-softmax
    logits of `logits_head`, or of all heads); `qk_only` (computes only q and k and returns
    just the logits: what a GPA teacher needs from its last block). With `qk`, those two
    modes return the pair (q, k), each [B, T, 1 or H, hd] in `dtype`, of `logits_head` (or
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
        dense = functools.partial(
            nn.DenseGeneral, features=(self.num_heads, head_dim), dtype=self.dtype,
            kernel_init=qkv_init, bias_init=nn.initializers.zeros)
        q = dense(name="query")(x)  # [B, T, H, hd]
        k = dense(name="key")(x)
        scale = head_dim ** -0.5

        def attn_logits(qh, kh):  # [B, T, h, hd] x2 -> [B, h, T, T] float32
            qh, kh = qh.transpose(0, 2, 1, 3), kh.transpose(0, 2, 1, 3)  # head-major [B, h, T, hd]
            return jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32) * scale

        one_head = slice(self.logits_head, self.logits_head + 1) if self.logits_head is not None else slice(None)
        if self.qk_only:  # a teacher's last block: only q and k (or q.k) of the wanted head(s)
            if self.qk:
                return None, (q[:, :, one_head], k[:, :, one_head])
            return None, attn_logits(q[:, :, one_head], k[:, :, one_head])
        v = dense(name="value")(x)
        logits = (q[:, :, one_head], k[:, :, one_head]) if self.return_logits and self.qk else None
        want_logits = self.return_logits and not self.qk
        explicit = self.implementation == "explicit" or (self.implementation == "auto" and
                                                         jax.default_backend() == "cpu")
        if want_logits or explicit:
            full = attn_logits(q, k)  # [B, H, T, T]
            logits = full[:, one_head] if want_logits else logits
            weights = jax.nn.softmax(full, axis=-1).astype(v.dtype)
            out = jnp.einsum("bhqk,bhkd->bhqd", weights, v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        else:
            impl = None if self.implementation == "auto" else self.implementation
            out = jax.nn.dot_product_attention(q, k, v, implementation=impl)  # [B, T, H, hd], fused
        out = nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, kernel_init=xavier_uniform,
                              bias_init=nn.initializers.zeros, name="out")(out)
        return out, logits


class Mlp(nn.Module):
    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # x [B, T, D] -> [B, T, D]
        dim = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=xavier_uniform,
                                  bias_init=nn.initializers.zeros)
        x = dense(self.hidden_dim, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # exact (erf) GELU, as timm/MAE/PyTorch
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
                              self.attention, self.qk, name="attn")(LayerNorm(dtype=self.dtype, name="norm1")(x))
        if self.qk_only:
            return None, logits
        x = x + DropPath(self.drop_path)(y, self.deterministic)
        y = Mlp(int(dim * self.mlp_ratio), self.dtype, name="mlp")(LayerNorm(dtype=self.dtype, name="norm2")(x))
        x = x + DropPath(self.drop_path)(y, self.deterministic)
        return x, logits


class Transformer(nn.Module):
    """A stack of `depth` blocks (params `block_0` ... `block_{depth-1}`), no final norm.

    attn_block: if set, also return the pre-softmax logits of that block (0-indexed),
      [B, H, T, T], or [B, 1, T, T] when attn_head picks one head. Only that block keeps
      its attention weights; all others use the fused kernel.
    stop_at_attn: return (None, logits) right after block attn_block's q and k.
    qk: instead of the logits, return that block's (q, k), each [B, T, H, hd] or
      [B, T, 1, hd] with attn_head, in the model dtype (the logits are q k^T * hd^-0.5):
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
