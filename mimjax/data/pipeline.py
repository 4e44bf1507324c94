"""The input pipeline: grain over a random-access source, sharded per process, shuffled
per epoch with the seed, MAE-augmented with per-record randomness, batched, with a
JSON-serialisable position for exact resume. Pure NumPy/PIL: no JAX here (see prefetch.py).
"""
from __future__ import annotations

import logging
import os
import threading

import grain
import numpy as np

from mimjax.data import augment, sources

log = logging.getLogger("mimjax")


class _Transform:
    """(global position, record) -> {"image": float32 [S, S, 3], "label": int32}, or None
    for an unreadable image (grain drops Nones), counted in `skipped` and named in a warning.

    Randomness comes from (seed, global position): reproducible, different every epoch,
    and independent of the process count. Runs in grain's reader threads, hence the lock.
    """

    def __init__(self, img_size: int, train: bool, seed: int, crop_scale=(0.2, 1.0)):
        self.img_size, self.train, self.seed, self.skipped = img_size, train, seed, 0
        self.crop_scale = tuple(crop_scale)
        self._lock = threading.Lock()

    def __call__(self, item):
        position, record = item
        image = record["image"]
        if isinstance(image, bytes):
            try:
                image = sources.decode(image)
            except Exception as e:  # noqa: BLE001 - any decoder failure: skip this file
                with self._lock:
                    self.skipped += 1
                    n = self.skipped
                log.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                            record.get("path", "?"), type(e).__name__, e, n)
                return None
        image = np.asarray(image)
        if image.ndim == 2 or image.shape[-1] == 1:  # grayscale TFDS sets (mnist: [28, 28, 1])
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
        image = image[..., :3].astype(np.uint8)  # drop alpha
        if self.train:
            x = augment.train_transform(image, self.img_size, np.random.default_rng((self.seed, position)),
                                        self.crop_scale)
        else:
            x = augment.eval_transform(image, self.img_size)
        return {"image": x, "label": np.int32(record.get("label", 0))}


class InputIterator:
    """Batches {"image": float32 [L, S, S, 3], "label": int32 [L]} of this process.

    `get_state()` -> {"next_index", "seed", "global_batch_size", "process_count"}, plain
    ints (JSON). `set_state()` on a fresh iterator of the same config continues with exactly
    the batches the saved one would have produced next. `num_skipped` counts unreadable
    images (including ones grain's reader threads decoded ahead of the last batch).
    """

    def __init__(self, grain_iter, transform: _Transform, num_records: int, *, seed: int,
                 global_batch_size: int, process_count: int):
        self._it, self._transform, self.num_records = grain_iter, transform, num_records
        self._config = {"seed": seed, "global_batch_size": global_batch_size, "process_count": process_count}

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    @property
    def num_skipped(self) -> int:
        return self._transform.skipped

    def get_state(self) -> dict:
        return {"next_index": int(self._it.get_state()["next_index"]), **self._config}

    def set_state(self, state: dict):
        """Resume at `state` (from `get_state`). Keys other than next_index are checked
        when present. Another process count is accepted at a batch boundary with no skipped
        records (the global order does not depend on it), where next_index is rescaled."""
        next_index = int(state["next_index"])
        for key in ("seed", "global_batch_size"):
            if key in state and state[key] != self._config[key]:
                raise ValueError(f"input state has {key}={state[key]}, this iterator {key}={self._config[key]}: "
                                 f"the saved position would point at other data")
        old_count, new_count = state.get("process_count", self._config["process_count"]), self._config["process_count"]
        if old_count != new_count:
            old_local, new_local = (self._config["global_batch_size"] // c for c in (old_count, new_count))
            if next_index % old_local:
                raise ValueError(f"input state from {old_count} processes at next_index={next_index} is not at "
                                 f"a batch boundary; cannot resume it with {new_count} processes")
            next_index = next_index // old_local * new_local
        self._it.set_state({"next_index": next_index})


def make_pretrain_iterator(data_config, *, img_size: int, global_batch_size: int, seed: int,
                           process_index: int = 0, process_count: int = 1, train: bool = True,
                           source=None, crop_scale=(0.2, 1.0)) -> InputIterator:
    """Batches of this process: train=True is infinite, reshuffled every epoch with the
    seed, augmented (`augment.train_transform`), full batches only; train=False is one pass
    in order with center crops (`augment.eval_transform`), the last partial batch kept.

    local batch L = global_batch_size / process_count. The global order is the same for
    any process count: global batch k holds the shuffled positions [k*B, (k+1)*B), and
    process p reads (and decodes) only its slice [k*B + p*L, k*B + (p+1)*L). So each
    process reads a disjoint shard, and 1 or 2 processes train on the same global batches.
    `source` overrides `make_source(data_config)`. crop_scale: RandomResizedCrop's area
    range, (0.2, 1) for MAE pre-training, (0.08, 1) for its linear probe and fine-tuning.
    """
    if global_batch_size <= 0 or process_count <= 0 or global_batch_size % process_count:
        raise ValueError(f"batch_size={global_batch_size} is not divisible by the {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index}: expected 0 <= index < process_count={process_count}")
    src = sources.make_source(data_config) if source is None else source
    if train and len(src) < global_batch_size:
        raise ValueError(f"the data source has {len(src)} records, fewer than one batch of {global_batch_size}")
    ordered = grain.MapDataset.source(src)
    if train:
        ordered = ordered.shuffle(seed=seed).repeat()  # repeat() reseeds the shuffle every epoch
    total, big, local = len(ordered), global_batch_size, global_batch_size // process_count

    def position(m):  # local index m -> global position of the m-th record this process reads
        return (m // local) * big + process_index * local + m % local

    num_local = (total // big) * local + max(0, min(total % big - process_index * local, local))
    transform = _Transform(img_size, train, seed, crop_scale)
    ds = grain.MapDataset.range(num_local).map(lambda m: (position(m), ordered[position(m)])).map(transform)
    # Reader threads decode/augment ahead (PIL releases the GIL). The buffer holds finished
    # float32 images (0.6 MB at 224 px): enough to keep the threads busy, bounded in memory,
    # and small because iterators are also made for a single batch.
    threads = min(16, os.cpu_count() or 1)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(4 * threads, min(2 * local, 256)))
    it = ds.to_iter_dataset(options).batch(local, drop_remainder=train)
    return InputIterator(iter(it), transform, len(src), seed=seed, global_batch_size=global_batch_size,
                         process_count=process_count)


make_iterator = make_pretrain_iterator  # the name the trainer uses


def source_length(data_config) -> int:
    return len(sources.make_source(data_config))
