"""The input pipeline: grain over a random-access source, sharded per process, shuffled
per epoch with the seed, MAE-augmented with per-record randomness, batched; and a device
prefetcher whose state is that of the last batch the trainer consumed (exact resume).
"""
from __future__ import annotations

import collections
import logging

log = logging.getLogger("mimjax")

import grain
import jax
import numpy as np

from mimjax.data import augment, sources


class _Transform:
    """Decodes (if needed) and augments one record; returns None for an unreadable image,
    counted in `skipped` and named in a warning (grain then drops the record)."""

    def __init__(self, img_size: int, train: bool):
        self.img_size, self.train, self.skipped = img_size, train, 0

    def __call__(self, record, rng: np.random.Generator):
        image = record["image"]
        if isinstance(image, bytes):
            try:
                image = sources.decode(image)
            except Exception as e:  # noqa: BLE001 - any decoder failure: skip this file
                self.skipped += 1
                log.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                                record.get("path", "?"), type(e).__name__, e, self.skipped)
                return None
        image = np.asarray(image)
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        x = (augment.train_transform(image, self.img_size, rng) if self.train
             else augment.eval_transform(image, self.img_size))
        return {"image": x, "label": np.int32(record["label"])}


class InputIterator:
    """Batches {"image": float32 [b, S, S, 3], "label": int32 [b]} for this process.

    `get_state()` is JSON-serialisable; `set_state()` on a fresh iterator of the same
    config continues with exactly the batches the saved one would have produced next.
    """

    def __init__(self, grain_iter, transform: _Transform, num_records: int):
        self._it, self._transform, self.num_records = grain_iter, transform, num_records

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    @property
    def num_skipped(self) -> int:
        return self._transform.skipped

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict):
        self._it.set_state(state)


def make_iterator(dcfg, *, img_size: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, train: bool = True,
                  source=None) -> InputIterator:
    """Pre-training (train=True: infinite, reshuffled every epoch, augmented) or evaluation
    (train=False: one pass in order, center crops, last partial batch kept) batches of this
    process's shard: records process_index, process_index + process_count, ..."""
    if global_batch_size % process_count:
        raise ValueError(f"batch_size={global_batch_size} is not divisible by the {process_count} processes")
    src = sources.make_source(dcfg) if source is None else source
    if len(src) < process_count:
        raise ValueError(f"the data source has {len(src)} records, fewer than the {process_count} processes")
    ds = grain.MapDataset.source(src).slice(slice(process_index, None, process_count))
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    transform = _Transform(img_size, train)
    ds = ds.random_map(transform, seed=seed + 1)
    it = ds.to_iter_dataset().batch(global_batch_size // process_count, drop_remainder=train)
    return InputIterator(iter(it), transform, len(src))


def source_length(dcfg) -> int:
    return len(sources.make_source(dcfg))


def _to_device(batch, sharding):
    if sharding is None:
        return jax.device_put(batch)
    if jax.process_count() > 1:
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.device_put(batch, sharding)


class DevicePrefetcher:
    """Keeps `size` batches on device ahead of the step. `get_state()` returns the input
    state right after the last batch handed out, not after the ones prefetched."""

    def __init__(self, iterator: InputIterator, size: int = 2, sharding=None):
        self.iterator, self.size, self.sharding = iterator, max(size, 1), sharding
        self._queue = collections.deque()
        self._consumed_state = iterator.get_state()

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._queue) < self.size:
            batch = next(self.iterator)
            self._queue.append((_to_device(batch, self.sharding), self.iterator.get_state()))
        batch, self._consumed_state = self._queue.popleft()
        return batch

    def get_state(self) -> dict:
        return self._consumed_state

    @property
    def num_skipped(self) -> int:
        return self.iterator.num_skipped
