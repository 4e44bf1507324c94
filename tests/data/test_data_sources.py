import io
import logging

import numpy as np
import pytest
from PIL import Image

from mimjax.data import images, make_pretrain_iterator, make_source, sources


def write_images(d, rng):
    """Odd but valid images, two broken ones and a non-image into directory d."""
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (20, 24), np.uint8), "L").save(d / "gray.JPG")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), np.uint8), "CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 60000, np.uint16)).save(d / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), np.uint8)).save(d / "tiny.bmp")
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), np.uint8)).convert("P").save(d / "palette.gif")
    Image.fromarray(rng.integers(0, 255, (8, 8, 4), np.uint8), "RGBA").save(d / "alpha.webp")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"")
    return 9  # image files, broken ones included


def test_folder_class_per_folder_decodes_odd_images(tmp_path, data_config):
    rng = np.random.default_rng(0)
    (tmp_path / "b_cats").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(tmp_path / "b_cats" / f"{i}.png")
    n = write_images(tmp_path / "a_dogs" / "nested", rng)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(tmp_path / "loose.png")  # ignored
    src = make_source(data_config(source="folder", folder=str(tmp_path)))
    assert src.classes == ["a_dogs", "b_cats"] and len(src) == n + 2
    assert [label for _, label in src.files] == [0] * n + [1] * 2
    assert [p for p, _ in src.files] == sorted(p for p, _ in src.files)  # deterministic order
    decoded = {}
    for i in range(len(src)):
        rec = src[i]
        name = rec["path"].rsplit("/", 1)[-1]
        if name in ("corrupt.jpg", "truncated.jpg"):
            with pytest.raises(Exception):
                images.decode(rec["image"])
            continue
        decoded[name] = images.decode(rec["image"])
        assert decoded[name].dtype == np.uint8 and decoded[name].shape[2] == 3
    assert decoded["gray.JPG"].shape == (20, 24, 3) and decoded["tiny.bmp"].shape == (4, 4, 3)
    assert decoded["palette.gif"].shape == (9, 7, 3) and decoded["alpha.webp"].shape == (8, 8, 3)
    np.testing.assert_array_equal(decoded["deep16.png"], round(60000 / 257))  # rescaled, not clipped to 255
    assert len(np.unique(decoded["cmyk.jpg"])) > 1


def test_folder_skips_and_counts_broken_files(tmp_path, data_config, caplog):
    n = write_images(tmp_path, np.random.default_rng(1))
    c = data_config(source="folder", folder=str(tmp_path))
    src = make_source(c)
    assert src.classes == [] and len(src) == n and {label for _, label in src.files} == {0}
    with caplog.at_level(logging.WARNING):
        it = make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=0, train=False)
        batches = list(it)
    assert sum(len(b["label"]) for b in batches) == n - 2
    assert it.num_skipped == 2
    assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text
    assert all(b["image"].shape[1:] == (16, 16, 3) and b["image"].dtype == np.float32 for b in batches)
    # Training: bad records are dropped and batches stay full.
    it = make_pretrain_iterator(c, img_size=16, global_batch_size=4, seed=0)
    for _ in range(4):
        assert next(it)["image"].shape == (4, 16, 16, 3)
    assert it.num_skipped >= 2


def test_exif_rotation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    im.save(tmp_path / "phone.jpg", exif=exif)
    assert images.decode((tmp_path / "phone.jpg").read_bytes()).shape == (30, 10, 3)


def test_source_errors(tmp_path, data_config):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="'.*empty' holds no images"):
        make_source(data_config(source="folder", folder=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="'.*missing': expected an existing directory"):
        make_source(data_config(source="folder", folder=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="None: expected an existing directory"):
        make_source(data_config(source="folder"))
    with pytest.raises(ValueError, match="'no_such_dataset_xyz' is not a TFDS dataset"):
        make_source(data_config(source="tfds", name="no_such_dataset_xyz"))
    with pytest.raises(ValueError, match="'webdataset': expected one of embedded, embedded_faces, tfds, folder"):
        make_source(data_config(source="webdataset"))


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_source_with_mock_data(data_config, name, shape):
    import tensorflow_datasets as tfds

    c = data_config(source="tfds", name=name)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        src = make_source(c)
        assert len(src) == 12 and src[3]["image"].dtype == np.uint8 and src[3]["image"].shape == shape
        it = make_pretrain_iterator(c, img_size=32, global_batch_size=4, seed=0)
        b = next(it)
    assert b["image"].shape == (4, 32, 32, 3) and b["label"].dtype == np.int32 and it.num_records == 12


def test_embedded_photos_are_real_and_varied(data_config):
    src = make_source(data_config(source="embedded"))
    photos = src.photos
    assert len(src) == 64 * len(photos) and src[len(photos) + 2]["image"] is photos[2]
    assert len(photos) >= 15 and all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    assert all(p.std() > 10 and min(p.shape[:2]) >= 250 for p in photos)  # real, not constant, not icons
    assert len({p.shape for p in photos}) > 3 and len({int(p.mean()) for p in photos}) > 10
    # photographs have neighbouring pixels that agree far more than noise does
    assert all(np.abs(np.diff(p[..., 0].astype(int), axis=1)).mean() < 40 for p in photos)


def test_embedded_faces_and_synthetic(data_config):
    faces = make_source(data_config(source="embedded_faces"))
    assert len(faces) == 200 and faces[0]["image"].shape == (25, 25, 3) and faces[0]["image"].dtype == np.uint8
    assert [faces[i]["label"] for i in (0, 99, 100, 199)] == [1, 1, 0, 0]
    syn = make_source(data_config(source="synthetic", synthetic_size=5))
    assert len(syn) == 5
    np.testing.assert_array_equal(syn[3]["image"], syn[3]["image"])
    assert not np.array_equal(syn[3]["image"], syn[4]["image"])
