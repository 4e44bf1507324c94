"""What the study measures of one pre-trained encoder: frozen features (cls token and mean
patch token, one forward pass), the linear probe and weighted k-NN on them, and the GPA
premise (does the teacher's per-patch score find the garment?).

The linear probe is MAE's head (BatchNorm without affine + linear, `LinearProbeHead`) with
the GPA authors' optimizer (SGD, momentum 0.9, no weight decay, warm-up then cosine; LARS
is a config value away), trained on features
computed once from the centre crops: on a CPU the encoder cannot be run on fresh random
crops every step for 90 epochs of 60,000 images, so the probe sees no augmentation
(docs/eval_interop.md says so beside the table). Fine-tuning, which does train the encoder
on augmented crops, is `mimjax.eval.finetune` itself.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mimjax.data import augment
from mimjax.eval.knn import knn_accuracy
from mimjax.eval.linprobe import LinearProbeHead
from mimjax.train.optim import make_optimizer
from mimjax.train.schedule import lr_schedule


def crops(src, img_size: int, indices) -> tuple[np.ndarray, np.ndarray]:
    """(the evaluation crops (resize, centre crop) uint8 [n, S, S, 3], labels int32 [n]) of
    src[i] for i in indices, each item read once."""
    items = [src[int(i)] for i in indices]
    return (np.stack([augment.eval_crop_uint8(np.asarray(it["image"]), img_size) for it in items]),
            np.array([it["label"] for it in items], np.int32))


def pooled(encoder, params, images):
    """Both pooled features of one forward pass: ("token": the normed cls token, "avg": the
    LayerNorm of the mean patch token), each [B, D], as `VisionTransformer.features`."""
    def both(m, x):
        tokens = m.blocks(m._tokens(x), True)  # [B, 1+N, D] before the final norm
        return {"token": m.norm(tokens)[:, 0], "avg": m.norm(tokens[:, 1:].mean(axis=1))}

    return encoder.apply({"params": params}, images, method=both)


def extract(encoder, params, src, batch: int = 500) -> tuple[dict, np.ndarray]:
    """({"token": float32 [N, D], "avg": [N, D]}, labels int32 [N]) of every image of `src`."""
    fn = jax.jit(lambda p, x: pooled(encoder, p, x))
    out, labels = {"token": [], "avg": []}, []
    for i in range(0, len(src), batch):
        images, y = crops(src, encoder.img_size, range(i, min(i + batch, len(src))))
        x = augment.normalize(images)  # [b, S, S, 3]
        pad = batch - len(x)  # one compiled shape
        f = fn(params, np.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0))))
        for k in out:
            out[k].append(np.asarray(f[k])[:len(x)])
        labels.append(y)
    return {k: np.concatenate(v) for k, v in out.items()}, np.concatenate(labels)


def probe_config(epochs: int = 90, batch_size: int = 1024, blr: float = 0.1, warmup_epochs: int = 10,
                 optimizer: str = "sgd") -> ml_collections.ConfigDict:
    """The probe's settings (configs/study.py's `probe`): blr 0.1, 90 epochs, 10 warm-up as
    MAE's main_linprobe.py; SGD as the GPA authors' (optimizer "lars" for MAE's)."""
    return ml_collections.ConfigDict({"epochs": epochs, "batch_size": batch_size, "blr": blr,
                                      "warmup_epochs": warmup_epochs, "optimizer": optimizer})


def linear_probe(train_x, train_y, test_x, test_y, pc, seed: int = 0) -> dict:
    """Top-1 accuracy (%) of MAE's linear probe trained on fixed features train_x [N, D]
    (labels [N]) and evaluated on test_x [M, D]: `pc` from `probe_config`."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    steps_per_epoch = len(train_x) // pc.batch_size
    total = steps_per_epoch * pc.epochs
    o = ml_collections.ConfigDict({"name": pc.optimizer, "blr": pc.blr, "lr": -1.0, "min_lr": 0.0,
                                   "momentum": 0.9, "weight_decay": 0.0, "grad_clip": 0.0})
    lr_fn = lr_schedule(o, pc.batch_size, total, steps_per_epoch * pc.warmup_epochs)
    tx = make_optimizer(o, lr_fn)
    head = LinearProbeHead(num_classes)
    v = head.init(jax.random.key(seed), jnp.zeros((1, train_x.shape[1]), jnp.float32))
    state = (v["params"], v["batch_stats"], tx.init(v["params"]))

    def step(state, batch):
        params, stats, opt = state
        x, y = batch  # [b, D], [b]

        def loss_fn(p):
            logits, new = head.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), None

    @jax.jit
    def epoch(state, key):  # one shuffled pass, full batches
        order = jax.random.permutation(key, len(train_x))[:steps_per_epoch * pc.batch_size]
        xs = jnp.asarray(train_x)[order].reshape(steps_per_epoch, pc.batch_size, -1)
        ys = jnp.asarray(train_y)[order].reshape(steps_per_epoch, pc.batch_size)
        return jax.lax.scan(step, state, (xs, ys))[0]

    key = jax.random.key(seed)
    for e in range(pc.epochs):
        state = epoch(state, jax.random.fold_in(key, e))
    logits = head.apply({"params": state[0], "batch_stats": state[1]}, jnp.asarray(test_x))
    return {"top1": 100.0 * float(np.mean(np.asarray(logits.argmax(-1)) == test_y)), "num_test": len(test_x),
            "num_train": len(train_x), "epochs": pc.epochs}


def knn(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> dict:
    """Weighted k-NN top-1 (%) (`mimjax eval knn`'s: cosine similarity, exp(cos / T) votes)."""
    r = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature)
    return {"top1": r["top1"], "k": r["k"], "temperature": temperature}


def foreground(images_uint8, patch: int, threshold: float) -> np.ndarray:
    """bool [B, N]: the patches (row-major, as the ViT's) whose mean pixel is above
    `threshold` (0-255) in uint8 crops [B, S, S, 3]."""
    b, s = images_uint8.shape[:2]
    g = s // patch
    x = images_uint8.astype(np.float32).mean(-1).reshape(b, g, patch, g, patch)
    return x.mean(axis=(2, 4)).reshape(b, g * g) > threshold


def premise(c, path: str, *, from_ema: bool = False) -> dict:
    """Does the teacher's GPA score find the garment? For the encoder of run `path` (its EMA
    teacher with from_ema) as the teacher of c.pretrain's block and head, on the first
    c.premise.num_images test crops: the ROC AUC of the per-patch GPA score for predicting
    foreground patches (mean pixel > c.premise.threshold), per image then averaged over the
    images with both kinds (0.5 = chance); and at the end of the masking schedule (t = 1),
    the share of the hard-masked patches that are foreground, against the foreground share
    of all patches (what random masking's hard picks would hit)."""
    from mimjax import masking, workdir
    from mimjax.data.labelled import labelled_sources
    from mimjax.models import model_from_config
    from mimjax.study.stats import roc_auc
    from mimjax.train import teacher

    p = c.pretrain
    encoder = model_from_config(workdir.model_config(path)).encoder
    state = workdir.load_state(path)
    params = state["ema_params"] if from_ema else state["params"]["encoder"]
    _, test = labelled_sources(c.data.source, train_split=c.data.train_split, test_split=c.data.test_split)
    n = min(c.premise.num_images, len(test))
    images, _ = crops(test, encoder.img_size, range(n))  # uint8 [n, S, S, 3]
    fg = foreground(images, encoder.patch_size, c.premise.threshold)  # [n, N]
    fn = jax.jit(lambda prm, x: teacher.scores(encoder, prm, x, p.teacher, "gpa"))
    g = np.concatenate([np.asarray(fn(params, augment.normalize(images[i:i + 250]))) for i in range(0, n, 250)])
    aucs = [roc_auc(g[i], fg[i]) for i in range(n)]
    valid = [a for a in aucs if np.isfinite(a)]
    n_hard = int(masking.mask_counts(1.0, fg.shape[1], p.masking.mask_ratio)[0])  # the authors' hard/soft shares
    top = np.argsort(-g, axis=1, kind="stable")[:, :n_hard]  # the hard picks at t = 1: highest scores
    return {"auc": float(np.mean(valid)) if valid else None, "images": len(valid),
            "hard_foreground_share": float(np.take_along_axis(fg, top, axis=1).mean()),
            "foreground_share": float(fg.mean()), "n_hard": n_hard, "threshold": c.premise.threshold,
            "teacher": "ema" if from_ema else "encoder", "block": p.teacher.block, "head": p.teacher.head}
