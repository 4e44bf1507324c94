import json

import jax
import numpy as np
import pytest

from mimjax.data import augment, make_pretrain_iterator, prefetch_to_device


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batch_shapes_dtypes_and_range(data_config):
    it = make_pretrain_iterator(data_config(source="embedded"), img_size=16, global_batch_size=4, seed=0)
    b = next(it)
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
    hi = (1 - np.array(augment.IMAGENET_MEAN)) / augment.IMAGENET_STD
    assert np.isfinite(b["image"]).all() and (b["image"] <= hi + 1e-5).all() and b["image"].std() > 0.1
    with pytest.raises(ValueError, match="batch_size=9 is not divisible by the 2 processes"):
        make_pretrain_iterator(data_config(), img_size=16, global_batch_size=9, seed=0, process_count=2)
    with pytest.raises(ValueError, match="has 200 records, fewer than one batch of 256"):
        make_pretrain_iterator(data_config(source="embedded_faces"), img_size=16, global_batch_size=256, seed=0)


def test_shards_are_disjoint_and_cover_each_epoch(data_config):
    # synthetic labels are the record index (64 records): process p's labels are its shard
    c = data_config(source="synthetic", synthetic_size=64)
    seen = []
    for p in (0, 1):
        it = make_pretrain_iterator(c, img_size=8, global_batch_size=8, seed=0, process_index=p, process_count=2)
        seen.append(np.concatenate([b["label"] for b in take(it, 8)]))  # one epoch: 8 global batches
    assert len(seen[0]) == len(seen[1]) == 32
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(64))


def test_two_processes_read_halves_of_the_same_global_batches(data_config):
    c = data_config(source="embedded")
    single = make_pretrain_iterator(c, img_size=16, global_batch_size=8, seed=5)
    halves = [make_pretrain_iterator(c, img_size=16, global_batch_size=8, seed=5, process_index=p, process_count=2)
              for p in (0, 1)]
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in halves]), next(single)["image"])


def test_deterministic_per_seed_and_reshuffled_per_epoch(data_config):
    c = data_config(source="embedded_faces")
    a, again, other = (make_pretrain_iterator(c, img_size=8, global_batch_size=200, seed=s) for s in (0, 0, 1))
    e1, e2 = take(a, 2)
    np.testing.assert_array_equal(e1["image"], next(again)["image"])
    assert not np.array_equal(e1["image"], next(other)["image"])
    # every epoch is a permutation of the 200 records, in a new order each time
    assert e1["label"].sum() == e2["label"].sum() == 100 and not np.array_equal(e1["label"], e2["label"])


def test_eval_is_one_ordered_pass_with_partial_last_batch(data_config):
    it = make_pretrain_iterator(data_config(source="embedded_faces"), img_size=8, global_batch_size=64,
                                seed=0, train=False)
    labels = [b["label"] for b in it]
    assert [len(x) for x in labels] == [64, 64, 64, 8]
    np.testing.assert_array_equal(np.concatenate(labels), (np.arange(200) < 100).astype(np.int32))


def test_exact_resume_from_json_state(data_config):
    c = data_config(source="embedded")
    make = lambda: make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=3)
    it = make()
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"next_index": 12, "seed": 3, "global_batch_size": 4, "process_count": 1}
    want = take(it, 2)
    resumed = make()
    resumed.set_state(state)
    for w, g in zip(want, take(resumed, 2)):
        np.testing.assert_array_equal(w["image"], g["image"])
        np.testing.assert_array_equal(w["label"], g["label"])
    with pytest.raises(ValueError, match="input state has seed=3, this iterator seed=4"):
        make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=4).set_state(state)


def test_resume_with_another_process_count(data_config):
    c = data_config(source="embedded")
    single = make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=2)
    take(single, 2)
    state, want = single.get_state(), next(single)["image"]
    halves = [make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=2, process_index=p, process_count=2)
              for p in (0, 1)]
    for h in halves:
        h.set_state(state)
    np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in halves]), want)


def test_prefetch_to_device_yields_the_batches_and_resumes_exactly(data_config):
    c = data_config(source="embedded")
    make = lambda: make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=3)
    host = take(make(), 5)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    pf = prefetch_to_device(make(), size=2, sharding=sharding)
    got = take(pf, 3)
    for h, g in zip(host, got):
        assert isinstance(g["image"], jax.Array) and g["image"].sharding == sharding
        np.testing.assert_array_equal(np.asarray(g["image"]), h["image"])
        np.testing.assert_array_equal(np.asarray(g["label"]), h["label"])
    state = pf.get_state()
    assert state["next_index"] == 12  # what was consumed, not the 20 prefetched
    resumed = prefetch_to_device(make(), size=2)
    resumed.set_state(json.loads(json.dumps(state)))
    for h, g in zip(host[3:], take(resumed, 2)):
        np.testing.assert_array_equal(np.asarray(g["image"]), h["image"])


def test_crop_scale_reaches_the_random_resized_crop(data_config):
    """crop_scale=(1, 1) with square images: every crop is the whole image (maybe flipped),
    unlike the default (0.2, 1) pre-training crops."""
    from mimjax.data.sources import Synthetic

    src = Synthetic(8, 32)  # square 32 x 32 uint8 images
    whole = [augment.normalize(src[i]["image"]) for i in range(len(src))]

    def batch(scale):
        it = make_pretrain_iterator(None, img_size=32, global_batch_size=8, seed=0, source=src, crop_scale=scale)
        return next(it)["image"]

    full, default = batch((1.0, 1.0)), batch((0.2, 1.0))
    def is_whole(x):
        return any(np.allclose(x, w, atol=1e-5) or np.allclose(x, w[:, ::-1], atol=1e-5) for w in whole)
    assert all(is_whole(x) for x in full)
    assert not all(is_whole(x) for x in default)
