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

from mimjax import errors
from mimjax.data import augment, images, sources
from mimjax.data.randaugment import RandAugment

log = logging.getLogger("mimjax")


# When to give up on a source (DataError, exit 2) instead of skipping on forever: no image
# read in a full pass over this process's records, or more than MAX_SKIPPED_SHARE of the
# images tried so far were unreadable, once at least MIN_TRIED were tried.
MAX_SKIPPED_SHARE = 0.5
MIN_TRIED = 20


_LFS_HINT = "a git-lfs pointer"


def _unreadable_reason(data: bytes, e: Exception) -> str:
    """A short reason (no object reprs) why `data` did not decode."""
    if data.startswith(b"version https://git-lfs"):
        return f"{_LFS_HINT}, not the image"
    if not data:
        return "empty file"
    if type(e).__name__ == "UnidentifiedImageError":
        return "not a recognised image format"
    return f"{type(e).__name__}: {e}"


class _Transform:
    """(global position, record) -> {"image": uint8 [S, S, 3], "label": int32}, or None
    for an unreadable image (grain drops Nones), counted in `skipped` and named in a warning
    (once per file). Too many unreadable images raise `DataError` (see MAX_SKIPPED_SHARE).

    Randomness comes from (seed, global position): reproducible, different every epoch,
    and independent of the process count. Runs in grain's reader threads, hence the lock.
    """

    def __init__(self, img_size: int, train: bool, seed: int, crop_scale=(0.2, 1.0), *, randaugment: str = "",
                 full_pass: int = 0, what: str = "the data source", crop_draw: str = "torchvision"):
        self.img_size, self.train, self.seed, self.skipped, self.read = img_size, train, seed, 0, 0
        self.crop_scale, self.crop_draw = tuple(crop_scale), crop_draw
        self.randaugment = RandAugment(randaugment) if randaugment and train else None
        self.full_pass, self.what = full_pass, what  # records this process reads in one pass
        self.failure: Exception | None = None
        self._examples: list[str] = []
        self._warned: set = set()
        self._lock = threading.Lock()

    def _skip(self, path: str, reason: str):
        with self._lock:
            self.skipped += 1
            n, tried = self.skipped, self.skipped + self.read
            first = path not in self._warned
            self._warned.add(path)
            if first and len(self._examples) < 3:
                self._examples.append(f"{path} ({reason})")
            if self.failure is None and (
                    (tried >= MIN_TRIED and n > MAX_SKIPPED_SHARE * tried)
                    or (self.read == 0 and self.full_pass and tried >= self.full_pass)):
                kind = "no image could be read" if self.read == 0 else "more than half of the images are unreadable"
                self.failure = errors.DataError(
                    f"{self.what}: {kind}: {self.read} read, {n} skipped of {tried} tried; e.g. "
                    f"{'; '.join(self._examples)}; fix or remove them"
                    + (" (`git lfs pull` fetches git-lfs files)" if any(_LFS_HINT in x for x in self._examples) else ""))
        if self.failure is not None:
            raise self.failure
        if first:
            log.warning("skipping unreadable image %s (%s); %d skipped so far", path, reason, n)

    def __call__(self, item):
        if self.failure is not None:
            raise self.failure
        position, record = item
        image = record["image"]
        label = np.int32(record.get("label", 0))
        rng = np.random.default_rng((self.seed, position)) if self.train else None
        if isinstance(image, bytes):  # encoded (folders, arrayrecord): decoded here, JPEG crops by libjpeg
            path = record.get("path", "?")
            if "error" in record:  # the source could not open it (e.g. deleted mid-run)
                self._skip(path, record["error"])
                return None
            try:
                if self.train:
                    x = augment.train_crop_uint8(image, self.img_size, rng, self.crop_scale, decode=images.decode,
                                                 draw=self.crop_draw)
                else:
                    x = augment.eval_crop_uint8(images.decode(image), self.img_size)
            except Exception as e:  # noqa: BLE001 - any decoder failure: skip this file
                self._skip(path, _unreadable_reason(image, e))
                return None
            with self._lock:
                self.read += 1
        else:
            image = np.asarray(image)
            if image.ndim == 2 or image.shape[-1] == 1:  # grayscale TFDS sets (mnist: [28, 28, 1])
                image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
            image = image[..., :3].astype(np.uint8)  # drop alpha
            if self.train:
                x = augment.train_crop_uint8(image, self.img_size, rng, self.crop_scale, draw=self.crop_draw)
            else:
                x = augment.eval_crop_uint8(image, self.img_size)
        if self.randaugment is not None:  # after the crop and flip, before normalisation (timm's order)
            x = self.randaugment(x, rng)
        return {"image": x, "label": label}


class InputIterator:
    """Batches {"image": float32 [L, S, S, 3], "label": int32 [L]} of this process.

    The images are augmented as uint8 and normalised per batch (`augment.normalize`);
    with `host_uint8 = True` (set by DevicePrefetcher, which normalises on the device,
    prefetch.py) the batches keep uint8 images: 4x less to copy and transfer.

    `get_state()` -> {"next_index", "seed", "global_batch_size", "process_count"}, plain
    ints (JSON), plus {"num_files", "files_hash"} for a folder source (`fingerprint()`).
    `set_state()` on a fresh iterator of the same config continues with exactly
    the batches the saved one would have produced next. `num_skipped` counts unreadable
    images (including ones grain's reader threads decoded ahead of the last batch).
    """

    def __init__(self, grain_iter, transform: _Transform, num_records: int, *, seed: int,
                 global_batch_size: int, process_count: int, fingerprint: dict | None = None, num_threads: int = 0):
        self._it, self._transform, self.num_records = grain_iter, transform, num_records
        self.num_threads = num_threads  # grain's reader threads (the input-bound warning names them)
        self._config = {"seed": seed, "global_batch_size": global_batch_size, "process_count": process_count}
        self._fingerprint = dict(fingerprint or {})
        self.host_uint8 = False

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._it)
            if not self.host_uint8:
                batch["image"] = augment.normalize(batch["image"])
            return batch
        except Exception as e:
            if self._transform.failure is not None and e is not self._transform.failure:
                raise self._transform.failure from e  # however grain wrapped it: the one-line DataError
            raise

    @property
    def num_skipped(self) -> int:
        return self._transform.skipped

    def get_state(self) -> dict:
        return {"next_index": int(self._it.get_state()["next_index"]), **self._config, **self._fingerprint}

    def set_state(self, state: dict):
        """Resume at `state` (from `get_state`). Keys other than next_index are checked
        when present. Another process count is accepted at a batch boundary with no skipped
        records (the global order does not depend on it), where next_index is rescaled."""
        next_index = int(state["next_index"])
        for key in ("seed", "global_batch_size"):
            if key in state and state[key] != self._config[key]:
                raise ValueError(f"input state has {key}={state[key]}, this iterator {key}={self._config[key]}: "
                                 f"the saved position would point at other data")
        if self._fingerprint and "files_hash" in state and state["files_hash"] != self._fingerprint["files_hash"]:
            then, now = int(state.get("num_files", 0)), self._fingerprint["num_files"]
            change = (f"{now - then} added" if now > then else f"{then - now} removed" if now < then
                      else "the same number, but different names")
            log.warning("%s: the file list changed since the checkpoint (%d files then, %d now: %s), so the "
                        "data order from here differs from the interrupted run's", self._transform.what, then, now,
                        change)
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
                           source=None, crop_scale=(0.2, 1.0), randaugment: str = "",
                           num_threads: int = 0, crop_draw: str = "torchvision") -> InputIterator:
    """Batches of this process: train=True is infinite, reshuffled every epoch with the
    seed, augmented (`augment.train_transform`), full batches only; train=False is one pass
    in order with center crops (`augment.eval_transform`), the last partial batch kept.

    local batch L = global_batch_size / process_count. The global order is the same for
    any process count: global batch k holds the shuffled positions [k*B, (k+1)*B), and
    process p reads (and decodes) only its slice [k*B + p*L, k*B + (p+1)*L). So each
    process reads a disjoint shard, and 1 or 2 processes train on the same global batches.
    `source` overrides `make_source(data_config)`. crop_scale: RandomResizedCrop's area
    range, (0.2, 1) for MAE pre-training, (0.08, 1) for its linear probe and fine-tuning;
    crop_draw: `augment.crop_box`'s draw ("mae": its linear probe's util/crop.py).
    randaugment: a timm RandAugment spec applied to training crops after the flip
    (`randaugment.RandAugment`; MAE fine-tunes with "rand-m9-mstd0.5-inc1"), "" for none.
    num_threads: grain reader threads that decode and augment (0: min(16, CPU count)).
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
    root = getattr(src, "root", None)
    what = getattr(src, "what", None) or (f"data.folder={root!r}" if root else "the data source")
    transform = _Transform(img_size, train, seed, crop_scale, randaugment=randaugment,
                           full_pass=-(-len(src) // process_count), what=what, crop_draw=crop_draw)
    ds = grain.MapDataset.range(num_local).map(lambda m: (position(m), ordered[position(m)])).map(transform)
    # Reader threads decode/augment ahead (libjpeg and PIL release the GIL). The buffer holds
    # finished uint8 images (0.15 MB at 224 px): enough to keep the threads busy, bounded in memory,
    # and small because iterators are also made for a single batch.
    threads = num_threads or min(16, os.cpu_count() or 1)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(4 * threads, min(2 * local, 256)))
    it = ds.to_iter_dataset(options).batch(local, drop_remainder=train)
    return InputIterator(iter(it), transform, len(src), seed=seed, global_batch_size=global_batch_size,
                         process_count=process_count, num_threads=threads,
                         fingerprint=src.fingerprint() if hasattr(src, "fingerprint") else None)


make_iterator = make_pretrain_iterator  # the name the trainer uses


def source_length(data_config) -> int:
    return len(sources.make_source(data_config))
