"""Input data: sources (TFDS, image folder, embedded photos, synthetic), MAE augmentation,
the grain pipeline with checkpointable position, and device prefetch."""
from mimjax.data.augment import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, train_transform
from mimjax.data.pipeline import DevicePrefetcher, InputIterator, make_iterator, source_length
from mimjax.data.sources import make_source

__all__ = ["make_source", "make_iterator", "source_length", "DevicePrefetcher", "InputIterator",
           "train_transform", "eval_transform", "denormalize", "IMAGENET_MEAN", "IMAGENET_STD"]
