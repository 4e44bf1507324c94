import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from mimjax import config as config_lib
from mimjax.data import augment, make_iterator, make_source, DevicePrefetcher


def data_cfg(**kw):
    c = config_lib.base_config().data
    for k, v in kw.items():
        c[k] = v
    return c


def write_folder(root, flat=False):
    rng = np.random.default_rng(0)
    paths = {}
    for cls in ([""] if flat else ["cats", "dogs"]):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            p = d / f"ok{i}.png"
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(p)
            paths[p.name] = p
    d = root / ("" if flat else "dogs")
    Image.fromarray(rng.integers(0, 255, (20, 20), np.uint8), "L").save(d / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), np.uint8), "CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 20), np.uint16).astype(np.uint16)).save(d / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), np.uint8)).save(d / "tiny.bmp")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_class_per_folder_decodes_odd_images_and_skips_bad_ones(tmp_path, caplog):
    write_folder(tmp_path)
    src = make_source(data_cfg(source="folder", folder=str(tmp_path)))
    assert src.classes == ["cats", "dogs"] and len(src) == 3 + 3 + 6
    assert sorted({label for _, label in src.files}) == [0, 1]
    it = make_iterator(data_cfg(source="folder", folder=str(tmp_path)), img_size=16,
                       global_batch_size=10, seed=0, train=False)
    batches = list(it)
    assert sum(len(b["label"]) for b in batches) == 10  # 12 files - corrupt - truncated
    assert it.num_skipped == 2
    assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text
    assert batches[0]["image"].shape[1:] == (16, 16, 3) and batches[0]["image"].dtype == np.float32


def test_flat_folder_and_errors(tmp_path):
    write_folder(tmp_path / "flat", flat=True)
    src = make_source(data_cfg(source="folder", folder=str(tmp_path / "flat")))
    assert src.classes == [] and {label for _, label in src.files} == {0}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        make_source(data_cfg(source="folder", folder=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="expected an existing directory"):
        make_source(data_cfg(source="folder", folder=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="'no_such_dataset_xyz' is not a TFDS dataset"):
        make_source(data_cfg(source="tfds", name="no_such_dataset_xyz"))


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        it = make_iterator(data_cfg(source="tfds", name="imagenet2012"), img_size=32, global_batch_size=4, seed=0)
        b = next(it)
    assert b["image"].shape == (4, 32, 32, 3) and it.num_records == 12


def test_embedded_photos_are_real_and_varied():
    src = make_source(data_cfg(source="embedded"))
    photos = src.photos
    assert len(photos) >= 15 and all(p.dtype == np.uint8 and p.ndim == 3 for p in photos)
    assert all(p.std() > 10 for p in photos)  # not constant
    assert len({p.shape for p in photos}) > 3  # different photos
    faces = make_source(data_cfg(source="embedded_faces"))
    assert len(faces) == 200 and faces[0]["label"] == 1 and faces[150]["label"] == 0


def test_crop_box_matches_torchvision_bounds():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = augment.crop_box(rng, 300, 400)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        areas.append(h * w / (300 * 400))
        ratios.append(w / h)
    # scale (0.2, 1) and ratio (3/4, 4/3), up to rounding of h and w
    assert min(areas) > 0.19 and max(areas) <= 1.0
    assert min(ratios) > 0.74 and max(ratios) < 1.35
    # A very wide image exhausts the tries and falls back to a centred crop of ratio 4/3.
    top, left, h, w = augment.crop_box(np.random.default_rng(0), 10, 1000)
    assert (h, w) == (10, round(10 * 4 / 3)) and left == (1000 - w) // 2


def test_normalisation_and_flip():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = 255
    x = augment.normalize(img)
    np.testing.assert_allclose(x[0, 0], (1 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD), rtol=1e-6)
    np.testing.assert_array_equal(augment.denormalize(x), img)
    flips = set()
    for seed in range(20):
        out = augment.train_transform(img, 8, np.random.default_rng(seed), scale=(1.0, 1.0))
        flips.add(bool(out[0, 0, 0] < out[0, -1, 0]))
    assert flips == {True, False}


def test_shards_are_disjoint_and_seeded():
    c = data_cfg(source="embedded_faces")
    first = lambda p, seed=0: next(make_iterator(c, img_size=16, global_batch_size=8, seed=seed,
                                                 process_index=p, process_count=2, train=False))
    a, b = first(0), first(1)
    assert a["image"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(a["label"], [1, 1, 1, 1])
    assert not np.allclose(a["image"], b["image"])
    t0 = next(make_iterator(c, img_size=16, global_batch_size=8, seed=0))
    t0_again = next(make_iterator(c, img_size=16, global_batch_size=8, seed=0))
    t1 = next(make_iterator(c, img_size=16, global_batch_size=8, seed=1))
    np.testing.assert_array_equal(t0["image"], t0_again["image"])
    assert not np.array_equal(t0["image"], t1["image"])
    with pytest.raises(ValueError, match="batch_size=9 is not divisible by the 2 processes"):
        make_iterator(c, img_size=16, global_batch_size=9, seed=0, process_count=2)


def test_exact_resume_through_the_device_prefetcher():
    c = data_cfg(source="embedded")
    make = lambda: DevicePrefetcher(make_iterator(c, img_size=16, global_batch_size=4, seed=3), size=2)
    pf = make()
    for _ in range(3):
        next(pf)
    state = pf.get_state()
    assert state == {"next_index": 12}  # what was consumed, not what was prefetched
    want = [np.asarray(next(pf)["image"]) for _ in range(2)]
    resumed = make()
    resumed.iterator.set_state(state)
    got = [next(resumed) for _ in range(2)]
    assert isinstance(got[0]["image"], jax.Array)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, np.asarray(g["image"]))


def test_epochs_reshuffle():
    c = data_cfg(source="embedded_faces")
    it = make_iterator(c, img_size=8, global_batch_size=200, seed=0)
    e1, e2 = next(it)["label"], next(it)["label"]
    assert e1.sum() == e2.sum() == 100 and not np.array_equal(e1, e2)
    assert math.isclose(len(e1), 200)


def test_two_processes_read_disjoint_halves_of_the_same_global_batches():
    c = data_cfg(source="embedded")
    single = make_iterator(c, img_size=16, global_batch_size=8, seed=5)
    halves = [make_iterator(c, img_size=16, global_batch_size=8, seed=5, process_index=p, process_count=2)
              for p in (0, 1)]
    for _ in range(3):
        want = next(single)["image"]
        got = np.concatenate([next(h)["image"] for h in halves])
        np.testing.assert_array_equal(got, want)
