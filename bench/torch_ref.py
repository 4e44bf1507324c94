"""PyTorch references for the benchmark, built from timm's layers (optional: needs torch +
timm, `pip install -r requirements-torch.txt`).

- `MAE`: the structure of MAE's `models_mae.py` (PatchEmbed, fixed sin-cos position
  embeddings, random masking by argsort of noise, encoder on the visible tokens, decoder
  512 x 8, norm-pix MSE on the masked patches) with timm `Block`s.
- `GPATeacher`: a frozen timm `VisionTransformer` of the same size, run to block 9, q and k
  of that block, head 11's pre-softmax logits -> column sums -> per-image min-max (docs/method.md
  §2); `gpa_noise` turns them into MAE noise the way the authors do (soft picks by
  `torch.multinomial` without replacement get 2, the top-scored get 3; docs/method.md §3).
- `make_train_step`: teacher (if any) + MAE loss + backward + AdamW (MAE's recipe, no
  decay on 1-D parameters and tokens), one call per step.
- `make_encoder_step`: timm `VisionTransformer` forward + backward, loss = mean output.

    python -c "import torch; from bench.torch_ref import MAE; print(MAE(64, 16, 192, 2, 3)(torch.randn(2, 3, 64, 64)))"
"""
from __future__ import annotations

import functools

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mimjax.models.layers import posemb_sincos_2d

LayerNorm = functools.partial(nn.LayerNorm, eps=1e-6)


def _blocks(dim, depth, heads, mlp_ratio=4.0):
    return nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)])


class MAE(nn.Module):
    """MAE (`models_mae.MaskedAutoencoderViT`): forward(images NCHW, noise [B, N] or None) -> loss."""

    def __init__(self, img_size=224, patch=16, dim=768, depth=12, heads=12, decoder_dim=512, decoder_depth=8,
                 decoder_heads=16, mlp_ratio=4.0, norm_pix_loss=True, mask_ratio=0.75):
        super().__init__()
        self.patch, self.norm_pix_loss, self.mask_ratio = patch, norm_pix_loss, mask_ratio
        self.patch_embed = PatchEmbed(img_size, patch, 3, dim)
        grid = img_size // patch
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_buffer("pos_embed", torch.from_numpy(posemb_sincos_2d(grid, grid, dim))[None])
        self.blocks = _blocks(dim, depth, heads, mlp_ratio)
        self.norm = LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_dim) * 0.02)
        self.register_buffer("decoder_pos_embed", torch.from_numpy(posemb_sincos_2d(grid, grid, decoder_dim))[None])
        self.decoder_blocks = _blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder_norm = LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, imgs):  # [B, 3, H, W] -> [B, N, p*p*3], pixels in (p, q, c) order
        b, c, h, _ = imgs.shape
        p, g = self.patch, h // self.patch
        x = imgs.reshape(b, c, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, g * g, p * p * c)

    def random_masking(self, x, noise):
        """Keep the N - M tokens with the smallest noise; mask [B, N] (1 = masked)."""
        b, n, d = x.shape
        len_keep = int(n * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :len_keep] = 0
        return x, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs, noise):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # [B, N, D]
        x, mask, ids_restore = self.random_masking(x, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)  # [B, 1+K, Dd]
        b, n = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # [B, N, p*p*3]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred.float() - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, noise=None):
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.patch_embed.num_patches, device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        return self.forward_loss(imgs, self.forward_decoder(latent, ids_restore), mask)


class GPATeacher(nn.Module):
    """Frozen timm ViT; forward(images) -> GPA scores g [B, N] in [0, 1] of (block, head)."""

    def __init__(self, img_size=224, patch=16, dim=768, depth=12, heads=12, block=9, head=11):
        super().__init__()
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth,
                                     num_heads=heads, num_classes=0)
        self.block, self.head = block, head
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, imgs):
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(imgs))))
        for blk in v.blocks[:self.block]:
            x = blk(x)
        attn = v.blocks[self.block].attn
        _b, _t, d = x.shape
        qkv = attn.qkv(v.blocks[self.block].norm1(x))[:, :, :2 * d]  # q, k of all heads [B, T, 2D]
        hd = d // attn.num_heads
        q = qkv[:, :, self.head * hd:(self.head + 1) * hd]
        k = qkv[:, :, d + self.head * hd:d + (self.head + 1) * hd]
        logits = (q @ k.transpose(1, 2)).float() * hd ** -0.5  # [B, T, T], pre-softmax
        r = logits.sum(dim=1)[:, 1:]  # column sums over all queries, cls key dropped -> [B, N]
        lo, hi = r.min(-1, keepdim=True).values, r.max(-1, keepdim=True).values
        return (r - lo) / (hi - lo + torch.finfo(torch.float32).tiny)


def gpa_noise(g, n_hard: int, n_soft: int):
    """MAE noise [B, N] for the GPA mask: U[0, 1), n_soft patches ~ g without replacement
    -> 2, the n_hard highest g -> 3 (docs/method.md §3)."""
    noise = torch.rand_like(g)
    if n_soft:
        noise.scatter_(1, torch.multinomial(g, n_soft, replacement=False), 2.0)
    if n_hard:
        noise.scatter_(1, g.topk(n_hard, dim=1).indices, 3.0)
    return noise


def adamw(model, lr: float):
    """MAE's optimizer: AdamW (0.9, 0.95), weight decay 0.05 except 1-D params and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def vit_args(size_args: dict, img_size: int) -> dict:
    """mimjax `vit_kwargs` -> these classes' arguments."""
    return {"img_size": img_size, "patch": size_args["patch_size"], "dim": size_args["width"],
                "depth": size_args["depth"], "heads": size_args["num_heads"]}


def make_train_step(arch: dict, method: str, batch: int, device: str = "cpu", dtype=None, counts=None,
                    block: int = 9, head: int = 11, **mae_kwargs):
    """A no-argument callable running one train step (method mae | gpa_teacher) on a fixed
    random batch; returns the loss tensor. dtype: autocast dtype (bf16 on CUDA) or None.
    counts: (n_hard, n_soft) of the GPA mask; default that of progress 0 of the README
    recipe (hard 0, soft 0.3 M). mae_kwargs: other `MAE` arguments (decoder_dim, ...)."""
    model = MAE(**arch, **mae_kwargs).to(device)
    if counts is None:
        masked = model.patch_embed.num_patches - int(model.patch_embed.num_patches * (1 - model.mask_ratio))
        counts = (0, int(0.3 * masked + 1e-4))
    opt = adamw(model, lr=1.5e-4 * batch / 256)
    teacher = GPATeacher(**arch, block=block, head=head).to(device) if method == "gpa_teacher" else None
    imgs = torch.randn(batch, 3, arch["img_size"], arch["img_size"], device=device)

    def step():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            noise = gpa_noise(teacher(imgs), *counts) if teacher is not None else None
            loss = model(imgs, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def make_encoder_step(arch: dict, batch: int, device: str = "cpu", dtype=None):
    """A no-argument callable: timm ViT forward_features (normed tokens [B, 1+N, D]), loss =
    their mean, backward (float32; with dtype, e.g. torch.bfloat16, the forward runs under
    `torch.autocast` of that dtype and the backward follows its dtypes, float32 weights)."""
    model = VisionTransformer(img_size=arch["img_size"], patch_size=arch["patch"], embed_dim=arch["dim"],
                              depth=arch["depth"], num_heads=arch["heads"], num_classes=0).to(device)
    imgs = torch.randn(batch, 3, arch["img_size"], arch["img_size"], device=device)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model.forward_features(imgs).float().mean()
        loss.backward()
        return loss

    return step


def sync(device: str):
    """Waits for queued device work (CUDA); a no-op on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
