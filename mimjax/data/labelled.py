"""Labelled image sets for evaluation (k-NN, linear probe, fine-tuning), by a short spec."""
from __future__ import annotations

import types

from mimjax.data.sources import make_source


class _Subset:
    def __init__(self, src, indices):
        self.src, self.indices = src, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.src[self.indices[i]]


def labelled_sources(dataset: str, *, test_dataset: str = "", train_split: str = "train",
                     test_split: str = "test", data_dir: str = ""):
    """(train, test) random-access labelled sources of a dataset spec: `embedded_faces`,
    `tfds:NAME`, `idx:DIR` (train / test) or `arrayrecord:PATH` (`mimjax prepare imagenet`; their train_split /
    test_split, e.g. validation) or `folder:PATH` (class-per-folder). Without
    a test_dataset, a source with no test split is split here: every 4th image is a test
    image. Shared by k-NN, the linear probe and fine-tuning."""
    def source(spec, split):
        kind, _, arg = spec.partition(":")  # the fields make_source reads for each kind
        if kind in ("arrayrecord", "idx"):
            kind = spec  # make_source takes the path in data.source
        return make_source(types.SimpleNamespace(source=kind, name=arg, split=split, data_dir=data_dir,
                                                 manual_dir="", folder=arg, synthetic_size=1000))

    train = source(dataset, train_split)
    if test_dataset:
        return train, source(test_dataset, test_split)
    if dataset.startswith(("tfds:", "arrayrecord:", "idx:")):
        return train, source(dataset, test_split)
    n = len(train)
    return _Subset(train, [i for i in range(n) if i % 4]), _Subset(train, range(0, n, 4))
