"""Device prefetch that keeps the input position of the batch actually consumed."""
from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np

from mimjax.data import augment


_SHIFT, _SCALE = augment.normalize_coefficients()


@jax.jit
def normalize_images(x):
    """uint8 [..., 3] -> float32, (x / 255 - mean) / std: `augment.normalize` on the device,
    the one jitted place where a uint8 batch becomes the model's input (elementwise, so the
    batch keeps its sharding). The same float32 subtraction and multiplication as NumPy's
    (bit-equal, tested)."""
    return (x.astype(jnp.float32) - _SHIFT) * _SCALE


def _normalized(batch):
    if "image" in batch and np.dtype(batch["image"].dtype) == np.uint8:
        return {**batch, "image": normalize_images(batch["image"])}
    return batch


def device_put_fn(sharding=None):
    """host batch -> device batch. Without a sharding: `jax.device_put` (default device).
    With one: `jax.device_put(x, sharding)` on one process; on several, each process holds
    only its local slice, so `jax.make_array_from_process_local_data` assembles the global
    array."""
    if sharding is None:
        return jax.device_put
    if jax.process_count() > 1:
        return lambda batch: jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return lambda batch: jax.device_put(batch, sharding)


class DevicePrefetcher:
    """Iterates `put(batch)` with `size` batches on device ahead of the one handed out.

    The inner iterator runs `size` batches ahead, so its own state is not the resume
    point; `get_state()` here is the input state right after the last batch handed out,
    and `set_state()` drops the prefetched batches and moves the inner iterator there.
    An `InputIterator` is switched to uint8 batches (`host_uint8`): they travel as uint8
    and become float32 here, on the device (`normalize_images`), equal to the host's.
    """

    def __init__(self, iterator, size: int = 2, put=None):
        self.iterator, self.size, self.put = iterator, max(size, 1), put or jax.device_put
        if hasattr(iterator, "host_uint8"):  # uint8 batches, normalised on the device (normalize_images)
            iterator.host_uint8 = True
        self._queue = collections.deque()
        self._consumed_state = iterator.get_state()

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._queue) < self.size:
            batch = next(self.iterator)
            self._queue.append((_normalized(self.put(batch)), self.iterator.get_state()))
        batch, self._consumed_state = self._queue.popleft()
        return batch

    def get_state(self) -> dict:
        return self._consumed_state

    def set_state(self, state: dict):
        self._queue.clear()
        self.iterator.set_state(state)
        self._consumed_state = self.iterator.get_state()

    @property
    def num_skipped(self) -> int:
        return self.iterator.num_skipped


def prefetch_to_device(iterator, size: int = 2, sharding=None) -> DevicePrefetcher:
    """Batches of `iterator` as jax.Arrays (placed by `sharding`, see `device_put_fn`),
    `size` ahead; its get_state/set_state are those of the last batch consumed."""
    return DevicePrefetcher(iterator, size, put=device_put_fn(sharding))
