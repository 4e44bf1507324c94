"""k-NN evaluation during pre-training (`eval.every`): the weighted k-NN top-1 of the
current encoder on a held-out labelled set, written as `knn_top1` (a fraction in [0, 1]).

The labelled set is the one `mimjax eval knn --dataset` reads (mimjax.data.labelled:
`embedded_faces`, `tfds:NAME`, `folder:PATH`), cut to its first eval.num_train /
eval.num_test images, decoded (center crops) once and kept on the host, as this process's
slices of padded global batches. At each evaluation every process encodes them with the
encoder's own parameter sharding and the run's batch sharding (jit; a pmap run's state is
gathered to its global layout first), the features stay on the devices, and one jitted
k-NN (`knn_scores`, the same as `mimjax eval knn`) gives a replicated top-1. The state is
only read, so the training trajectory is the same with and without it.
"""
from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("mimjax")


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_scores(train_feats, train_labels, test_feats, *, k: int = 20, temperature: float = 0.07,
               num_classes: int, train_valid=None):
    """train_feats [M, D], train_labels int [M], test_feats [T, D] -> class scores [T, C].

    Features are L2-normalised here; score_c = sum over the k most similar training
    images of label c of exp(cos / temperature). train_valid: bool [M] or None; rows
    marked False (padding) are never neighbours."""
    tr = train_feats / jnp.linalg.norm(train_feats, axis=-1, keepdims=True)
    te = test_feats / jnp.linalg.norm(test_feats, axis=-1, keepdims=True)
    sim = te @ tr.T  # [T, M]
    if train_valid is not None:
        sim = jnp.where(train_valid[None, :], sim, -jnp.inf)
    top_sim, top_idx = jax.lax.top_k(sim, k)  # [T, k]
    weights = jnp.exp(top_sim / temperature)
    onehot = jax.nn.one_hot(train_labels[top_idx], num_classes)  # [T, k, C]
    return jnp.einsum("tk,tkc->tc", weights, onehot)


class FeatureProgress:
    """`k-NN train features 2048/10000  20%  512.3 img/s  ETA 0:00:15`, the training progress
    line's format (`metrics.ProgressBar`, on stderr), while a k-NN extracts features: a line
    at most every `every_s` seconds, and once one was printed, the last one at 100%; a
    shorter extraction prints nothing. `update(n, out)` after each batch of n images: `out`
    (the batch's features, computed asynchronously) is waited for only when a line is due,
    so the count is of images really encoded."""

    def __init__(self, what: str, total: int, *, every_s: float = 5.0, stream=None, enabled: bool = True):
        from mimjax.train.metrics import ProgressBar

        self.total, self.every_s, self.enabled, self.done = total, every_s, enabled, 0
        self._bar = ProgressBar(total, stream=stream, enabled=enabled, every_s=0.0, label=f"k-NN {what}")
        self._start = self._last = time.perf_counter()
        self._printed = False

    def update(self, n: int, out=None):
        self.done = min(self.done + n, self.total)
        now = time.perf_counter()
        finished = self.done >= self.total
        if not self.enabled or not (now - self._last >= self.every_s or (finished and self._printed)):
            return
        if out is not None:
            jax.block_until_ready(out)
            now = time.perf_counter()
        self._bar.update(self.done, images_per_sec=self.done / max(now - self._start, 1e-9))
        self._last, self._printed = now, True
        if finished:
            self._bar.close()


def _first(src, n: int):
    from mimjax.data.labelled import _Subset

    return src if n < 0 or n >= len(src) else _Subset(src, range(n))


def _num_classes(*srcs) -> int:
    """From the source's metadata (TFDS info, class folders, embedded labels), the same on
    every process."""
    for s in srcs:
        base = s
        while hasattr(base, "src") and hasattr(base, "indices"):  # data.labelled._Subset
            base = base.src
        if hasattr(base, "dataset_info"):
            return base.dataset_info.features["label"].num_classes
        if getattr(base, "classes", None):
            return len(base.classes)
        if hasattr(base, "labels"):
            return int(np.max(base.labels)) + 1
    raise ValueError("the number of classes of the eval dataset is unknown (no TFDS label feature or class folders)")


class KnnEval:
    """`KnnEval(ecfg, encoder, par, ...)(step, state) -> {"knn_top1": float}`, on every process.

    ecfg: the `eval` config (dataset, test_dataset, train_split, test_split, data_dir,
    num_train, num_test, k, temperature, pool, batch_size). Raises ValueError for a
    dataset that cannot be read (the caller makes it a config error)."""

    def __init__(self, ecfg, *, encoder, par, img_size: int, process_index: int = 0, process_count: int = 1,
                 progress_every_s: float = 5.0):
        from mimjax.data import make_iterator
        from mimjax.data.labelled import labelled_sources
        from mimjax.data.prefetch import device_put_fn
        from mimjax.parallel import mesh as mesh_lib

        train, test = labelled_sources(ecfg.dataset, test_dataset=ecfg.test_dataset, train_split=ecfg.train_split,
                                       test_split=ecfg.test_split, data_dir=ecfg.data_dir)
        train, test = _first(train, ecfg.num_train), _first(test, ecfg.num_test)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"eval.dataset={ecfg.dataset!r}: {len(train)} train / {len(test)} test images")
        self.num_classes = _num_classes(train, test)
        self.n = (len(train), len(test))
        self.k, self.temperature, self.par = min(int(ecfg.k), len(train)), float(ecfg.temperature), par
        big, local = int(ecfg.batch_size), int(ecfg.batch_size) // process_count
        self._batch, self._progress_every_s, self._is_main = big, progress_every_s, process_index == 0
        sharding = mesh_lib.batch_sharding(par.mesh)
        self._put = device_put_fn(sharding)

        def host_batches(src):  # this process's slices of the global batches, the last one padded (label -1)
            out = []
            for batch in make_iterator(None, img_size=img_size, global_batch_size=big, seed=0, train=False,
                                       source=src, process_index=process_index, process_count=process_count):
                pad = local - len(batch["label"])
                out.append({"image": np.pad(np.asarray(batch["image"], np.float32), ((0, pad),) + ((0, 0),) * 3),
                            "label": np.pad(np.asarray(batch["label"], np.int32), (0, pad), constant_values=-1)})
            for _ in range(len(out), -(-len(src) // big)):  # a process whose slice ran out early
                out.append({"image": np.zeros((local, img_size, img_size, 3), np.float32),
                            "label": np.full((local,), -1, np.int32)})
            return out

        self._train, self._test = host_batches(train), host_batches(test)
        self._encode = jax.jit(
            lambda p, x: encoder.apply({"params": p}, x, pool=ecfg.pool, method="features").astype(jnp.float32),
            out_shardings=sharding)
        self._top1 = jax.jit(self._top1_fn, out_shardings=par.replicated)
        log.info("k-NN during pre-training (%s): %d train / %d test images, %d classes, k=%d", ecfg.dataset,
                 *self.n, self.num_classes, self.k)

    def _top1_fn(self, train_feats, train_labels, test_feats, test_labels):
        cat = jnp.concatenate  # padding (label -1) is masked out: no neighbour, no test image
        train_labels, test_labels = cat(train_labels), cat(test_labels)
        scores = knn_scores(cat(train_feats), jnp.maximum(train_labels, 0), cat(test_feats), k=self.k,
                            temperature=self.temperature, num_classes=self.num_classes,
                            train_valid=train_labels >= 0)
        hits = (jnp.argmax(scores, axis=-1) == test_labels) & (test_labels >= 0)
        return hits.sum() / self.n[1]

    def features(self, enc_params, batches, progress: FeatureProgress | None = None):
        feats, labels = [], []
        for b in batches:
            b = self._put(b)
            feats.append(self._encode(enc_params, b["image"]))
            labels.append(b["label"])
            if progress is not None:
                progress.update(self._batch, feats[-1])
        return feats, labels

    def _progress(self, what: str, total: int) -> FeatureProgress:
        return FeatureProgress(what, total, every_s=self._progress_every_s, enabled=self._is_main)

    def __call__(self, step, state) -> dict:
        enc = self.par.to_global(state).params["encoder"]
        top1 = self._top1(*self.features(enc, self._train, self._progress("train features", self.n[0])),
                          *self.features(enc, self._test, self._progress("test features", self.n[1])))
        return {"knn_top1": float(np.asarray(top1.addressable_data(0)))}
