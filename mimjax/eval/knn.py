"""Frozen-feature evaluation: weighted k-NN (DINO / HPM protocol).

    mimjax eval knn --workdir W --dataset embedded_faces [--pool token|avg] [--k 20]

Features come from the pre-trained encoder (cls token or mean of patch tokens, normed),
are L2-normalised, and every test image votes with its k nearest training images
(cosine similarity), each weighted by exp(similarity / temperature).
"""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

# The jitted scoring, shared with the k-NN during pre-training (mimjax.train never imports mimjax.eval).
from mimjax.train.knn_eval import FeatureProgress, knn_scores


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *, k: int = 20,
                 temperature: float = 0.07, batch: int = 1024) -> dict:
    """Top-1 (and with more than 5 classes top-5) accuracy, percent, of weighted k-NN, test
    images in batches."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train_feats))
    top1 = top5 = 0
    for i in range(0, len(test_feats), batch):
        scores = np.asarray(knn_scores(jnp.asarray(train_feats), jnp.asarray(train_labels),
                                       jnp.asarray(test_feats[i:i + batch]), k=k,
                                       temperature=temperature, num_classes=num_classes))
        labels = test_labels[i:i + batch]
        ranked = np.argsort(-scores, axis=1)
        top1 += int((ranked[:, 0] == labels).sum())
        top5 += int((ranked[:, :5] == labels[:, None]).any(axis=1).sum())
    n = len(test_feats)
    return {**accuracy(top1, top5, n, num_classes), "num_test": n, "num_train": len(train_feats), "k": k}


def accuracy(top1_hits: int, top5_hits: int, n: int, num_classes: int) -> dict:
    """{"top1": %, "top5": %} of n test images; top-5 only with more than 5 classes (with 5
    or fewer every image is a top-5 hit, and the number says nothing)."""
    out = {"top1": 100.0 * top1_hits / n}
    if num_classes > 5:
        out["top5"] = 100.0 * top5_hits / n
    return out


def extract_features(encoder, enc_params, images_iter, pool: str = "token", progress: FeatureProgress | None = None):
    """(features [M, D] float32, labels [M] int32) of every batch of an iterator; `progress`
    counts the images (a line on stderr every few seconds)."""
    apply = jax.jit(lambda p, x: encoder.apply({"params": p}, x, pool=pool, method="features"))
    feats, labels = [], []
    for batch in images_iter:
        feats.append(np.asarray(apply(enc_params, batch["image"])))  # on the host: done when counted
        labels.append(np.asarray(batch["label"]))
        if progress is not None:
            progress.update(len(labels[-1]))
    return np.concatenate(feats), np.concatenate(labels)


# The smallest temperature whose best vote, exp(1 / temperature) (cosine 1), is finite in float32.
MIN_TEMPERATURE = 1 / math.log(float(np.finfo(np.float32).max))


def check_args(k: int, temperature: float, batch_size: int) -> None:
    """UsageError, one line, for `run_knn`'s numbers outside their domain: k >= 1,
    batch_size >= 1, temperature finite and > MIN_TEMPERATURE (about 0.0113)."""
    from mimjax.errors import UsageError

    if k < 1:
        raise UsageError(f"--k={k}: expected at least 1 neighbour")
    if batch_size < 1:
        raise UsageError(f"--batch_size={batch_size}: expected at least 1 image per forward pass")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"--temperature={temperature}: expected a finite number > 0 (each vote weighs "
                         f"exp(cosine / temperature))")
    if temperature <= MIN_TEMPERATURE:
        raise UsageError(f"--temperature={temperature}: expected > {MIN_TEMPERATURE:.6g}; below it a vote's weight "
                         f"exp(cosine / temperature) overflows float32 to inf and the votes no longer rank")


def run_knn(workdir: str, dataset: str = "embedded_faces", *, test_dataset: str = "", train_split: str = "train",
            test_split: str = "test", data_dir: str = "", pool: str = "token", k: int = 20,
            temperature: float = 0.07, batch_size: int = 256, random_init: bool = False,
            write: bool = True) -> dict:
    """`mimjax eval knn`: weighted k-NN accuracy of a run's frozen encoder on a labelled set
    (embedded_faces | tfds:NAME | folder:PATH; `test_dataset` a separate test set). The
    embedded set is split deterministically: every 4th image is a test image. Writes
    WORKDIR/knn.json (random_init: a randomly initialised encoder of the same architecture,
    the baseline, into WORKDIR/knn_random_init.json; write=False: the caller saves it with
    `write_result`) and returns the result, which records k, temperature and the checkpoint
    step evaluated (None for random_init). A k, temperature or batch size outside its domain
    (`check_args`) is a UsageError, and so is a result file that is a symbolic link (never
    written through); a gs:// workdir whose bucket cannot be reached is a ConfigError; all
    before any work."""
    from mimjax import paths
    from mimjax import workdir as workdir_lib
    from mimjax.data import make_iterator
    from mimjax.data.labelled import labelled_sources
    from mimjax.errors import UsageError
    from mimjax.models import init_model, model_from_config

    check_args(k, temperature, batch_size)
    workdir_lib.require_path(workdir, "--workdir")  # gs://...: one line before any work
    paths.refuse_link(result_path(workdir, random_init))  # never written through a link
    mc = workdir_lib.model_config(workdir)
    if mc is None:
        raise UsageError(f"{workdir!r} has no config.json; is it a mimjax workdir?")
    model = model_from_config(mc)
    step, params = (None, init_model(model, jax.random.key(0))) if random_init else \
        workdir_lib.load_latest_params(workdir)
    try:  # a missing folder, an IDX set not installed: one line, as train says it
        train_src, test_src = labelled_sources(dataset, test_dataset=test_dataset, train_split=train_split,
                                               test_split=test_split, data_dir=data_dir)
    except ValueError as e:
        raise UsageError(f"--dataset {dataset}: {e}") from None
    feats = []
    for what, src in (("train features", train_src), ("test features", test_src)):
        it = make_iterator(None, img_size=mc.img_size, global_batch_size=batch_size, seed=0,
                           train=False, source=src)
        feats.append(extract_features(model.encoder, params["encoder"], it, pool, FeatureProgress(what, len(src))))
    (tr_x, tr_y), (te_x, te_y) = feats
    result = knn_accuracy(tr_x, tr_y, te_x, te_y, k=k, temperature=temperature)
    result.update(workdir=paths.absolute(workdir), dataset=dataset, pool=pool, temperature=temperature,
                  step=None if step is None else int(step), random_init=random_init)
    if write:
        write_result(workdir, result)
    return result


def result_path(workdir: str, random_init: bool = False) -> str:
    """WORKDIR/knn.json, or WORKDIR/knn_random_init.json for the random-init baseline."""
    from mimjax import paths

    return paths.join(workdir, "knn_random_init.json" if random_init else "knn.json")


def write_result(workdir: str, result: dict) -> None:
    """`result_path` (by result["random_init"]); OSError when it cannot be written."""
    from mimjax import paths

    paths.write_text(result_path(workdir, result.get("random_init", False)), json.dumps(result, indent=2))
