"""Input data: sources (TFDS, image folder, ArrayRecord from `mimjax prepare imagenet`,
embedded photos, synthetic), MAE augmentation, the grain pipeline with a checkpointable
position, and device prefetch (where uint8 batches are normalised)."""
from mimjax.data.augment import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, train_transform
from mimjax.data.pipeline import InputIterator, make_iterator, make_pretrain_iterator, source_length
from mimjax.data.prefetch import DevicePrefetcher, prefetch_to_device
from mimjax.data.sources import make_source

__all__ = ["make_source", "make_pretrain_iterator", "make_iterator", "source_length", "InputIterator",
           "prefetch_to_device", "DevicePrefetcher", "train_transform", "eval_transform", "denormalize",
           "IMAGENET_MEAN", "IMAGENET_STD"]
