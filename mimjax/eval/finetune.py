"""MAE fine-tuning (`main_finetune.py`).

    mimjax finetune --config configs/finetune.py:vit_base_patch16 --workdir PRETRAIN_W --out FT_W

Model: the pre-trained encoder (with drop path), global average pooling + fc_norm (a fresh
LayerNorm; or the normed cls token with pool="token") and a linear head (trunc-normal std
2e-5, zero bias). AdamW, lr = blr * batch / 256, warm-up then cosine, layer-wise lr decay
(MAE `param_groups_lrd`); no weight decay on biases, norms, the cls token and the position
embedding, which trains here (from the sin-cos table, layer 0, as in MAE). On device,
each step: random erasing (timm, per image), then mixup / cutmix (timm `Mixup`, mode
'batch') with label smoothing folded into the soft targets; the host pipeline gives
RandomResizedCrop + flip (mimjax.data). This module owns the model, the layer-wise lr
decay, the on-device augmentation and the fine-tuning task; the run (data, optimizers,
loop, evaluation) is `mimjax.eval.classify.fit`, shared with the linear probe; the config
schema is `mimjax.eval.config`'s.

Writes OUT/config.json, OUT/metrics.jsonl, OUT/checkpoints/<step>/ (a restart resumes the
latest) and OUT/finetune.json (top-1 / top-5 on the test split).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mimjax.eval.classify import ClassifierState, Task, fit, load_encoder, trunc_normal
from mimjax.train.optim import make_optimizer
from mimjax.models import VisionTransformer


# --- Layer-wise lr decay ------------------------------------------------------------
def layer_id(path, depth: int) -> int:
    """MAE `get_layer_id_for_vit`: 0 for the patch embedding and cls token, i + 1 for
    block i, depth + 1 for what follows the blocks (norm / fc_norm, head)."""
    names = [str(getattr(k, "key", k)) for k in path]
    if names[0] == "encoder":
        if names[1] in ("cls_token", "patch_embed", "pos_embed"):
            return 0
        if names[1] == "blocks":
            return int(names[2].removeprefix("block_")) + 1
    return depth + 1


def lr_scales(params, depth: int, layer_decay: float):
    """Per-parameter lr multipliers layer_decay ** (depth + 1 - layer_id) (MAE
    `param_groups_lrd`), a pytree like params."""
    return jax.tree_util.tree_map_with_path(lambda p, _: layer_decay ** (depth + 1 - layer_id(p, depth)), params)


# --- Augmentation on device -----------------------------------------------------------
def smooth_one_hot(labels, num_classes: int, smoothing: float):
    """int [B] -> [B, C]: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mixup_cutmix(key, images, labels, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1):
    """timm `Mixup` (mode 'batch', correct_lam): with probability `prob` the batch is mixed
    with itself reversed, by cutmix (chosen with switch_prob when both alphas are > 0) or
    mixup, lam ~ Beta(alpha, alpha). Cutmix pastes a box of side sqrt(1 - lam) (centre
    uniform, clipped at the border) and lam becomes 1 - box area / image area.

    images float [B, H, W, C], labels int [B] -> (images [B, H, W, C], soft targets [B, C]
    = lam * smooth(labels) + (1 - lam) * smooth(labels reversed), lam scalar)."""
    _, h, w, _ = images.shape
    k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(key, 6)
    flipped = images[::-1]
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cut = jnp.asarray(cutmix_alpha > 0)
    ratio = jnp.sqrt(1.0 - lam_cut)
    cut_h, cut_w = jnp.floor(h * ratio).astype(jnp.int32), jnp.floor(w * ratio).astype(jnp.int32)
    cy, cx = jax.random.randint(k_y, (), 0, h), jax.random.randint(k_x, (), 0, w)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)  # [H, W]
    lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    apply = jax.random.uniform(k_apply) < prob
    lam = jnp.where(apply, jnp.where(use_cut, lam_cut, lam_mix), 1.0).astype(jnp.float32)
    cut = jnp.where(box[None, :, :, None], flipped, images)
    mixed = images * lam_mix + flipped * (1.0 - lam_mix)
    out = jnp.where(apply, jnp.where(use_cut, cut, mixed), images).astype(images.dtype)
    y = smooth_one_hot(labels, num_classes, smoothing)  # [B, C]
    return out, lam * y + (1.0 - lam) * y[::-1], lam


def random_erase(key, images, prob: float, *, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3), attempts: int = 10):
    """timm `RandomErasing` (mode 'pixel', one box) per image: with probability `prob`, the
    first of `attempts` boxes (area fraction ~ U(area), log aspect h/w ~ U(log aspect)) that
    fits strictly inside the image is filled with N(0, 1) noise (images are normalised).
    images float [B, H, W, C] -> the same shape."""
    if prob <= 0:
        return images
    b, h, w, _ = images.shape
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))

    def one(key, image):  # image [H, W, C]
        k_p, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
        target = jax.random.uniform(k_area, (attempts,), minval=area[0], maxval=area[1]) * h * w
        r = jnp.exp(jax.random.uniform(k_aspect, (attempts,), minval=log_aspect[0], maxval=log_aspect[1]))
        eh = jnp.round(jnp.sqrt(target * r)).astype(jnp.int32)  # [attempts]
        ew = jnp.round(jnp.sqrt(target / r)).astype(jnp.int32)
        fits = (eh < h) & (ew < w)
        i = jnp.argmax(fits)  # the first box that fits
        erase = fits[i] & (jax.random.uniform(k_p) < prob)
        top = jax.random.randint(k_top, (), 0, h - eh[i] + 1)  # timm: random.randint, both ends
        left = jax.random.randint(k_left, (), 0, w - ew[i] + 1)
        ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        box = erase & (ys >= top) & (ys < top + eh[i]) & (xs >= left) & (xs < left + ew[i])  # [H, W]
        return jnp.where(box[:, :, None], jax.random.normal(k_noise, image.shape, image.dtype), image)

    return jax.vmap(one)(jax.random.split(key, b), images)


# --- Model and steps ---------------------------------------------------------------
class Classifier(nn.Module):
    """Encoder -> pooled feature [B, D] ("avg": LayerNorm of the mean patch token, MAE's
    fc_norm; "token": the normed cls token) -> linear head -> logits [B, C]."""

    encoder: VisionTransformer
    num_classes: int
    pool: str = "avg"
    head_init_std: float = 2e-5

    @nn.compact
    def __call__(self, images, train: bool = False):  # images [B, S, S, 3]
        x = self.encoder.features(images, pool=self.pool, train=train).astype(jnp.float32)  # [B, D]
        return nn.Dense(self.num_classes, kernel_init=trunc_normal(self.head_init_std), name="head")(x)


def build_finetune(cfg, num_classes: int, lr_fn) -> Task:
    """The fine-tuning task for `fit`: the model, its optimizer and its pure steps."""
    m, a = cfg.model, cfg.augment
    encoder, pretrained = load_encoder(cfg.init, img_size=m.img_size, drop_path=m.drop_path, dtype=m.dtype,
                                       remat=m.remat)
    encoder = encoder.clone(learned_pos_embed=True)  # MAE: pos_embed trains, from the sin-cos table
    model = Classifier(encoder, num_classes, cfg.pool, m.head_init_std)
    s = encoder.img_size
    init = lambda: model.init(jax.random.key(cfg.seed), jnp.zeros((1, s, s, 3)))["params"]
    layer_decay = cfg.optimizer.layer_decay
    scales = lr_scales(jax.eval_shape(init), encoder.depth, layer_decay) if layer_decay < 1 else None
    tx = make_optimizer(cfg.optimizer, lr_fn, scales)

    def init_state(encoder_params):
        params = init()
        enc = {"pos_embed": params["encoder"]["pos_embed"], **encoder_params}  # a learned one is kept
        if cfg.pool == "avg":  # MAE: fc_norm is new, the pre-training `norm` is dropped
            enc["norm"] = params["encoder"]["norm"]
        return ClassifierState.create({**params, "encoder": enc}, tx)

    def train_step(state, batch, frozen, base_key):
        del frozen  # every encoder weight trains here
        k_erase, k_mix, k_drop = jax.random.split(jax.random.fold_in(base_key, state.step), 3)
        images = random_erase(k_erase, batch["image"], a.reprob)  # [B, S, S, 3]
        images, targets, _ = mixup_cutmix(k_mix, images, batch["label"], num_classes, mixup_alpha=a.mixup,
                                          cutmix_alpha=a.cutmix, prob=a.mix_prob, switch_prob=a.switch_prob,
                                          smoothing=a.label_smoothing)

        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": k_drop})  # [B, C]
            return optax.softmax_cross_entropy(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        metrics = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.tree.norm(grads)}
        return state.apply_gradients(grads, tx), metrics

    def logits(state, images, frozen):
        return model.apply({"params": state.params}, images)

    return Task("finetune", s, pretrained, init_state, train_step, logits, frozen_encoder=False)


def finetune(cfg, workdir: str | None, out: str) -> dict:
    """Fine-tunes the encoder of `workdir` (a pre-training workdir or a `mimjax import`
    directory; None: `cfg.init`) in `out`, resuming what is there; returns the test result."""
    from mimjax.workdir import require_path

    require_path(workdir, "--workdir")
    require_path(out, "--out")
    cfg = cfg.copy_and_resolve_references()
    if workdir:
        cfg.init = workdir
    return fit(cfg, out, build_finetune)
