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

from mimjax.models.precision import current_platform, mixed_dot_general

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
# Same bound as xavier on the fused [3D, D] qkv matrix of timm/MAE.
qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
# Always float32 (dtype=None: the type of its float32 input and parameters), whatever the
# model's compute dtype: statistics, normalisation and output (`precision.py`).
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
    batch 32; as a matmul it is one more dense product (bench/README.md, "Last results on CPU")."""

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
        # [B, N, D] float32 (the product in `dtype`, see precision.py)
        return mixed_dot_general(self.dtype)(x, kernel, (((2,), (0,)), ((), ()))) + bias


ATTENTION_IMPLEMENTATIONS = ("auto", "explicit", "xla", "cudnn")


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v kernels [D, H, hd].

    `__call__` is the layer; `qk` computes only q and k, of one head or all: what a GPA
    teacher needs from its block, since its scores are column sums of q k^T, O(T hd) from q
    and k (`masking.gpa_scores_from_qk`), never the T x T map.

    `implementation` (static) picks the kernel: "auto" is `jax.nn.dot_product_attention`
    (XLA's choice) on GPU/TPU and, on the CPU backend, an explicit softmax in head-major
    layout ([B, H, T, hd], each head's T x T product a contiguous batched matmul), measured
    21% less time for a ViT-S attention layer's forward + backward at batch 32 on 2 cores
    (bench/README.md); "explicit" is that softmax everywhere; "xla" / "cudnn" force
    `jax.nn.dot_product_attention`'s implementation (cuDNN flash attention: GPU, bf16/fp16).
    """

    width: int
    num_heads: int
    dtype: Dtype = jnp.float32
    implementation: str = "auto"  # auto | explicit | xla | cudnn

    def setup(self):
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {self.implementation!r}: expected one of "
                             f"{ATTENTION_IMPLEMENTATIONS}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads={self.num_heads}")
        mixed = mixed_dot_general(self.dtype)  # products in `dtype`, float32 results (precision.py)
        dense = functools.partial(
            nn.DenseGeneral, features=(self.num_heads, self.width // self.num_heads), dtype=jnp.float32,
            dot_general=mixed, kernel_init=qkv_init, bias_init=nn.initializers.zeros)
        self.query, self.key, self.value = dense(), dense(), dense()
        self.out = nn.DenseGeneral(self.width, axis=(-2, -1), dtype=jnp.float32, dot_general=mixed,
                                   kernel_init=xavier_uniform, bias_init=nn.initializers.zeros)

    def __call__(self, x):  # x [B, T, D] -> [B, T, D]
        # The per-head T x T products (q k^T, weights @ v): XLA:CPU computes batched bf16 products
        # in float32 (it converts the operands back; checked with jax 0.10.2 and 0.12.0.1), so on
        # the CPU backend they stay float32 rather than pay a float32 -> bf16 -> float32 round trip.
        attn_dot = jax.lax.dot_general if current_platform() == "cpu" else mixed_dot_general(self.dtype)
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, H, hd] float32
        explicit = self.implementation == "explicit" or (self.implementation == "auto" and
                                                         current_platform() == "cpu")
        if explicit:
            qh, kh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # head-major [B, H, T, hd]
            logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32,
                                _dot_general=attn_dot) * q.shape[-1] ** -0.5  # [B, H, T, T]
            weights = jax.nn.softmax(logits, axis=-1)  # float32 softmax
            out = jnp.einsum("bhqk,bhkd->bhqd", weights, v.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32,
                             _dot_general=attn_dot).transpose(0, 2, 1, 3)  # [B, T, H, hd]
        else:
            impl = None if self.implementation == "auto" else self.implementation
            q, k, v = (a.astype(self.dtype) for a in (q, k, v))  # cuDNN flash attention takes bf16 / fp16
            out = jax.nn.dot_product_attention(q, k, v, implementation=impl)  # [B, T, H, hd], fused
        return self.out(out)

    def qk(self, x, head: int | None = None):
        """(q, k) of `head` (all heads when None), each [B, T, 1 or H, hd] float32; the
        attention logits are q k^T * hd^-0.5."""
        if head is not None and not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        heads = slice(None) if head is None else slice(head, head + 1)
        return self.query(x)[:, :, heads], self.key(x)[:, :, heads]


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
    `qk` runs only norm1 and the attention's q and k (`Attention.qk`)."""

    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    drop_path: Any = 0.0  # this block's stochastic-depth rate (traced in a scanned stack)
    attention: str = "auto"  # the attention kernel (`Attention.implementation`)

    def setup(self):
        self.norm1 = LayerNorm()
        self.attn = Attention(self.width, self.num_heads, self.dtype, self.attention)
        self.norm2 = LayerNorm()
        self.mlp = Mlp(int(self.width * self.mlp_ratio), self.dtype)
        # Named DropPath_0 / DropPath_1: stochastic depth draws its randomness by module name.
        self.DropPath = [DropPath(self.drop_path), DropPath(self.drop_path)]

    def __call__(self, x, deterministic: bool = True):  # x [B, T, D] -> [B, T, D]
        x = x + self.DropPath[0](self.attn(self.norm1(x)), deterministic)
        return x + self.DropPath[1](self.mlp(self.norm2(x)), deterministic)

    def qk(self, x, head: int | None = None):  # x [B, T, D] -> (q, k), each [B, T, 1 or H, hd]
        return self.attn.qk(self.norm1(x), head)


class Transformer(nn.Module):
    """A stack of `depth` blocks (params `block_0` ... `block_{depth-1}`), no final norm.

    `__call__` runs every block; `qk(x, block, head)` runs the blocks before `block` and
    returns that block's (q, k) (`Block.qk`), computing nothing after them: what a GPA
    teacher needs (the attention logits are q k^T * hd^-0.5; no [B, H, T, T] is formed).

    remat: rematerialise each block in the backward pass (memory for compute).
    drop_path: maximum stochastic-depth rate, linearly increasing over blocks (timm).
    scan: run the blocks as one `lax.scan` over their stacked parameters, so XLA compiles
      one block instead of `depth` (compile time and code size for ViT-L/H). Parameters
      keep the same `block_{i}` layout (checkpoints, export and sharding rules do not
      change); they are stacked inside the step. Same outputs as the unrolled stack
      (up to float reassociation); dropout draws its randomness differently.
    """

    depth: int
    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    drop_path: float = 0.0
    scan: bool = False
    attention: str = "auto"  # the attention kernel (`Attention.implementation`)

    def setup(self):
        if self.scan:  # each block's parameter tree as one parameter, applied by `_block`
            self.block_params = [
                self.param(f"block_{i}", lambda key: self._block().init(key, jnp.zeros((1, 1, self.width)))["params"])
                for i in range(self.depth)]
        else:  # submodules block_0 ... block_{depth-1}
            block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
            self.block = [block_cls(self.width, self.num_heads, self.mlp_ratio, self.dtype, self._rate(i),
                                    self.attention) for i in range(self.depth)]

    def __call__(self, x, deterministic: bool = True):  # x [B, T, D] -> [B, T, D]
        if self.scan:
            return self._scanned(x, 0, self.depth, deterministic)
        for block in self.block:
            x = block(x, deterministic)
        return x

    def qk(self, x, block: int, head: int | None = None):
        """x [B, T, D] -> (q, k) of block `block` (0-indexed), head `head` (all when None),
        each [B, T, 1 or H, hd] float32; the blocks run deterministically (a teacher)."""
        if not 0 <= block < self.depth:
            raise ValueError(f"block must be in [0, {self.depth}), got {block}")
        if self.scan:
            x = self._scanned(x, 0, block, True)
            return self._block().apply({"params": self.block_params[block]}, x, head, method="qk")
        for b in self.block[:block]:
            x = b(x, True)
        return self.block[block].qk(x, head)

    def _rate(self, i):
        return self.drop_path * i / max(self.depth - 1, 1)

    def _block(self, rate=0.0):  # an unbound Block, applied to explicit params
        return Block(self.width, self.num_heads, self.mlp_ratio, self.dtype, rate, self.attention, parent=None)

    def _scanned(self, x, lo, hi, deterministic):
        """Blocks lo .. hi-1 as one `lax.scan` over their stacked parameters."""
        if lo >= hi:
            return x
        keys = jax.random.split(self.make_rng("dropout") if not deterministic else jax.random.key(0), self.depth)

        def body(h, xs):  # h [B, T, D]; xs: one block's params, drop-path rate and key
            p, rate, key = xs
            return self._block(rate).apply({"params": p}, h, deterministic, rngs={"dropout": key}), None

        body = jax.checkpoint(body) if self.remat else body
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *self.block_params[lo:hi])  # leaves [hi-lo, ...]
        rates = jnp.array([self._rate(i) for i in range(lo, hi)], jnp.float32)
        return jax.lax.scan(body, x, (stacked, rates, keys[lo:hi]))[0]
