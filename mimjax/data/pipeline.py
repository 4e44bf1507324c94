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
    counted in `skipped` and named in a warning (grain then drops the record). Randomness
    comes from (seed, global position), so it does not depend on the process count."""

    def __init__(self, img_size: int, train: bool, seed: int):
        self.img_size, self.train, self.seed, self.skipped = img_size, train, seed, 0

    def __call__(self, item):
        position, record = item
        if record is None:
            return None
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
        if self.train:
            x = augment.train_transform(image, self.img_size, np.random.default_rng((self.seed, position)))
        else:
            x = augment.eval_transform(image, self.img_size)
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
    """Batches of this process for pre-training (train=True: infinite, reshuffled every
    epoch with the seed, augmented) or evaluation (train=False: one pass in order, center
    crops, last partial batch kept).

    The global order is the same for any process count: global batch k holds the shuffled
    positions [k*B, (k+1)*B), and process p reads (and decodes) only its slice
    [k*B + p*L, k*B + (p+1)*L), L = B / process_count. So 1 process and 2 processes train
    on the same global batches, and each reads a disjoint shard.
    """
    if global_batch_size % process_count:
        raise ValueError(f"batch_size={global_batch_size} is not divisible by the {process_count} processes")
    src = sources.make_source(dcfg) if source is None else source
    if len(src) < global_batch_size and train:
        raise ValueError(f"the data source has {len(src)} records, fewer than one batch of {global_batch_size}")
    ordered = grain.MapDataset.source(src)
    if train:
        ordered = ordered.shuffle(seed=seed).repeat()
    total, big, local = len(ordered), global_batch_size, global_batch_size // process_count
    # local index m -> global position of the m-th record this process reads
    position = lambda m: (m // local) * big + process_index * local + m % local
    num_local = (total // big) * local + max(0, min(total % big - process_index * local, local))
    transform = _Transform(img_size, train, seed)
    ds = grain.MapDataset.range(num_local).map(
        lambda m: (position(m), ordered[position(m)])).map(transform)
    it = ds.to_iter_dataset().batch(local, drop_remainder=train)
    return InputIterator(iter(it), transform, len(src))


def source_length(dcfg) -> int:
    return len(sources.make_source(dcfg))


class DevicePrefetcher:
    """Keeps `size` batches on device ahead of the step (`put` moves a host batch there,
    default `jax.device_put`). `get_state()` returns the input state right after the last
    batch handed out, not after the ones prefetched."""

    def __init__(self, iterator: InputIterator, size: int = 2, put=None):
        self.iterator, self.size, self.put = iterator, max(size, 1), put or jax.device_put
        self._queue = collections.deque()
        self._consumed_state = iterator.get_state()

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._queue) < self.size:
            batch = next(self.iterator)
            self._queue.append((self.put(batch), self.iterator.get_state()))
        batch, self._consumed_state = self._queue.popleft()
        return batch

    def get_state(self) -> dict:
        return self._consumed_state

    @property
    def num_skipped(self) -> int:
        return self.iterator.num_skipped
