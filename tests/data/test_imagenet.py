"""`mimjax prepare imagenet` on a miniature ImageNet in the official tar layout (10 classes x
20 JPEGs cut from scikit-image's bundled photos, varied sizes), and training / k-NN on it."""
import csv
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from mimjax import cli
from mimjax.data import imagenet, make_pretrain_iterator
from mimjax.data.images import to_rgb_uint8
from mimjax.data.sources import EMBEDDED_PHOTOS, _skimage_dir

SYNSETS = [f"n{1440764 + 1000 * i:08d}" for i in range(10)]  # n01440764-style ids, sorted
PER_CLASS, VAL_PER_CLASS = 20, 3


def _jpeg(photo: np.ndarray, rng) -> bytes:
    """A random crop of `photo` resized to a random ImageNet-like size, as a JPEG."""
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    size = (int(rng.integers(60, 160)), int(rng.integers(60, 160)))
    im = Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(70, 95)))
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_mini_imagenet(root, corrupt=None):
    """Writes root/{train.tar, val.tar, LOC_val_solution.csv, val_synsets.txt}; returns the
    {member name: (synset, bytes)} of the train and validation images. `corrupt`: a train
    member name whose bytes are replaced by a truncated JPEG."""
    rng = np.random.default_rng(0)
    photos = []
    for name in EMBEDDED_PHOTOS[:10]:
        with Image.open(os.path.join(_skimage_dir(), name)) as im:
            photos.append(to_rgb_uint8(im))
    train, val = {}, {}
    with tarfile.open(os.path.join(root, "train.tar"), "w") as outer:
        for c, synset in reversed(list(enumerate(SYNSETS))):  # tar order != sorted order
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for k in reversed(range(PER_CLASS)):
                    name = f"{synset}_{k}.JPEG"
                    data = _jpeg(photos[c], rng)
                    if name == corrupt:
                        data = data[:len(data) // 2]
                    train[f"{synset}/{name}"] = (synset, data)
                    _add(inner, name, data)
            _add(outer, f"{synset}.tar", buf.getvalue())
    with tarfile.open(os.path.join(root, "val.tar"), "w") as t:
        for i in range(len(SYNSETS) * VAL_PER_CLASS):
            name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            synset = SYNSETS[(i * 7) % len(SYNSETS)]
            val[name] = (synset, _jpeg(photos[SYNSETS.index(synset)], rng))
            _add(t, name, val[name][1])
    with open(os.path.join(root, "LOC_val_solution.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for name, (synset, _) in sorted(val.items(), reverse=True):  # any row order
            w.writerow([name[:-5], f"{synset} 1 2 30 40 {synset} 5 6 70 80"])
    with open(os.path.join(root, "val_synsets.txt"), "w") as f:
        f.write("".join(f"{val[n][0]}\n" for n in sorted(val)))
    return train, val


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_imagenet")
    train, val = make_mini_imagenet(str(root))
    out = str(root / "prepared")
    assert cli.main(["mimjax", "prepare", "imagenet", "--train_tar", str(root / "train.tar"), "--val_tar",
                     str(root / "val.tar"), "--val_labels", str(root / "LOC_val_solution.csv"), "--out", out,
                     "--examples_per_shard", "64"]) == 0
    return {"root": root, "out": out, "train": train, "val": val}


def open_text(path) -> str:
    with open(path) as f:
        return f.read()


def _records(out, split):
    src = imagenet.ArrayRecordImages(out, split)
    return [src[i] for i in range(len(src))]


def test_prepare_writes_sorted_records_and_metadata(mini):
    meta = json.loads(open_text(os.path.join(mini["out"], "metadata.json")))
    assert meta["classes"] == SYNSETS
    assert meta["splits"]["train"]["num_examples"] == 200 and meta["splits"]["validation"]["num_examples"] == 30
    assert meta["splits"]["train"]["per_class"] == [20] * 10 and meta["splits"]["validation"]["per_class"] == [3] * 10
    assert [s["file"] for s in meta["splits"]["train"]["shards"]] == [f"train-{i:05d}.array_record" for i in range(4)]
    assert [s["num_examples"] for s in meta["splits"]["train"]["shards"]] == [64, 64, 64, 8]
    train = _records(mini["out"], "train")
    # classes sorted, members sorted by name inside each class; bytes and labels as in the tars
    assert [r["path"] for r in train] == sorted(mini["train"], key=lambda p: (p.split("/")[0], p))
    for r in train:
        synset, data = mini["train"][r["path"]]
        assert r["image"] == data and SYNSETS[r["label"]] == synset
    val = _records(mini["out"], "validation")
    assert [r["path"] for r in val] == sorted(mini["val"])
    assert all(SYNSETS[r["label"]] == mini["val"][r["path"]][0] for r in val)


def test_prepare_is_deterministic_and_refuses_a_used_out(mini, tmp_path):
    out = str(tmp_path / "again")
    imagenet.prepare(out, train_tar=str(mini["root"] / "train.tar"), examples_per_shard=64, workers=3)

    def digest(d, f):
        with open(os.path.join(d, f), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    for i in range(4):
        assert digest(out, f"train-{i:05d}.array_record") == digest(mini["out"], f"train-{i:05d}.array_record")
    with pytest.raises(imagenet.PrepareError, match="exists and is not an empty directory"):
        imagenet.prepare(out, train_tar=str(mini["root"] / "train.tar"))


def test_validation_label_formats(mini, tmp_path):
    root, names = mini["root"], sorted(mini["val"])
    want = {n[:-5]: s for n, (s, _) in mini["val"].items()}
    assert imagenet.read_val_labels(str(root / "LOC_val_solution.csv"), names) == want
    assert imagenet.read_val_labels(str(root / "val_synsets.txt"), names) == want
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{n}\t{s}\n" for n, (s, _) in mini["val"].items()))
    assert imagenet.read_val_labels(str(pairs), names) == want
    ints = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    ints.write_text("".join(f"{i % 10 + 1}\n" for i in range(len(names))))
    with pytest.raises(imagenet.PrepareError, match="devkit"):
        imagenet.read_val_labels(str(ints), names)
    short = tmp_path / "short.txt"
    short.write_text("n01440764\n")
    with pytest.raises(imagenet.PrepareError, match="1 lines, the validation tar 30 images"):
        imagenet.read_val_labels(str(short), names)


def test_validation_labels_from_the_devkit(mini, tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    names = sorted(mini["val"])
    ilsvrc_id = {s: 10 - i for i, s in enumerate(SYNSETS)}  # the devkit's ids are not the sorted index
    synsets = np.zeros(len(SYNSETS), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for i, s in enumerate(SYNSETS):
        synsets[i] = (ilsvrc_id[s], s)
    mat = io.BytesIO()
    scipy_io.savemat(mat, {"synsets": synsets})
    truth = "".join(f"{ilsvrc_id[mini['val'][n][0]]}\n" for n in names).encode()
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as t:
        _add(t, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        _add(t, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
    assert imagenet.read_val_labels(str(devkit), names) == {n[:-5]: s for n, (s, _) in mini["val"].items()}


def test_corrupt_jpeg_is_skipped_and_counted_or_an_error_with_strict(tmp_path, capsys):
    bad = f"{SYNSETS[3]}_5.JPEG"
    make_mini_imagenet(str(tmp_path), corrupt=bad)
    args = ["mimjax", "prepare", "imagenet", "--train_tar", str(tmp_path / "train.tar"), "--val_tar",
            str(tmp_path / "val.tar"), "--val_labels", str(tmp_path / "val_synsets.txt")]
    assert cli.main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mimjax prepare imagenet: unreadable image {SYNSETS[3]}/{bad} (")
    assert not os.path.exists(tmp_path / "strict")  # the shards written before it are removed, --out too
    assert cli.main([*args, "--out", str(tmp_path / "lenient")]) == 0
    out = capsys.readouterr().out
    assert "train: 199 images in 1 shards, 1 unreadable skipped" in out and f"{SYNSETS[3]}/{bad}" in out
    meta = json.loads(open_text(tmp_path / "lenient" / "metadata.json"))
    assert meta["splits"]["train"]["per_class"][3] == 19
    assert [s["name"] for s in meta["splits"]["train"]["skipped"]] == [f"{SYNSETS[3]}/{bad}"]
    train = _records(str(tmp_path / "lenient"), "train")
    assert len(train) == 199 and all(SYNSETS[r["label"]] == r["path"].split("/")[0] for r in train)


@pytest.mark.parametrize("where", ["middle", "inside the last image"])
def test_truncated_tar_is_an_error_naming_the_member(mini, tmp_path, where, capsys):
    raw = (mini["root"] / "train.tar").read_bytes()
    with tarfile.open(mini["root"] / "train.tar") as t:
        last = t.getmembers()[-1]  # the last class tar; its last image ends before its 1 kB end marker
        cut = len(raw) // 2 if where == "middle" else last.offset_data + last.size - 1024 - 700
    (tmp_path / "train.tar").write_bytes(raw[:cut])
    code = cli.main(["mimjax", "prepare", "imagenet", "--train_tar", str(tmp_path / "train.tar"), "--out",
                     str(tmp_path / "out")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("mimjax prepare imagenet: ") and "truncated" in line
    assert "member" in line and ".tar" in line and "download" in line
    assert not os.path.exists(tmp_path / "out")  # nothing written, or what was written removed


def test_missing_metadata_and_split_are_one_line_errors(mini, tmp_path, data_config):
    with pytest.raises(ValueError, match="no metadata.json there; prepare it"):
        make_pretrain_iterator(data_config(source=f"arrayrecord:{tmp_path}"), img_size=16, global_batch_size=4,
                               seed=0)
    with pytest.raises(ValueError, match="has no split 'test'; it has train, validation"):
        make_pretrain_iterator(data_config(source=f"arrayrecord:{mini['out']}", split="test"), img_size=16,
                               global_batch_size=4, seed=0)


def test_training_reads_arrayrecord_resumes_and_slices_per_process(mini, data_config):
    c = data_config(source=f"arrayrecord:{mini['out']}", split="train")
    make = lambda **kw: make_pretrain_iterator(c, img_size=16, global_batch_size=20, seed=1, **kw)
    single = make()
    epoch = [next(single) for _ in range(10)]  # 200 records: one epoch
    assert epoch[0]["image"].shape == (20, 16, 16, 3) and epoch[0]["image"].dtype == np.float32
    assert np.bincount(np.concatenate([b["label"] for b in epoch]), minlength=10).tolist() == [20] * 10
    # resume: a fresh iterator at the saved position reads the same batches
    it = make()
    for _ in range(3):
        next(it)
    resumed = make()
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    for want in epoch[3:6]:
        np.testing.assert_array_equal(next(resumed)["image"], want["image"])
    # 2 processes: each reads its half of every global batch (disjoint, together complete)
    halves = [make(process_index=p, process_count=2) for p in (0, 1)]
    for want in epoch:
        got = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), want["image"])
        np.testing.assert_array_equal(np.concatenate([g["label"] for g in got]), want["label"])


def test_validation_split_one_pass_split_over_processes(mini, data_config):
    c = data_config(source=f"arrayrecord:{mini['out']}", split="validation")
    full = make_pretrain_iterator(c, img_size=16, global_batch_size=8, seed=0, train=False)
    whole = np.concatenate([b["label"] for b in full])
    assert len(whole) == 30
    parts = [np.concatenate([b["label"] for b in make_pretrain_iterator(
        c, img_size=16, global_batch_size=8, seed=0, train=False, process_index=p, process_count=2)])
        for p in (0, 1)]
    assert len(parts[0]) + len(parts[1]) == 30
    assert sorted(np.concatenate(parts).tolist()) == sorted(whole.tolist())


@pytest.mark.slow
def test_prepare_pretrain_and_knn_end_to_end(mini, tmp_path, tiny_config):
    from mimjax.eval import knn
    from mimjax.train import pretrain

    c = tiny_config(total_steps=3, checkpoint_every=3, log_every=1,
                    data=dict(source=f"arrayrecord:{mini['out']}", split="train"))
    pretrain.train(c, str(tmp_path / "w"))
    rows = [json.loads(x) for x in open_text(tmp_path / "w" / "metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    res = knn.run_knn(str(tmp_path / "w"), f"arrayrecord:{mini['out']}", test_split="validation", k=5,
                      batch_size=32)
    assert res["num_test"] == 30 and 0 <= res["top1"] <= 100


def test_linear_probe_config_reads_train_and_validation(mini, tiny_config):
    from mimjax.eval import classify
    from mimjax.eval import config as eval_config
    from mimjax.train import config as train_config

    c = eval_config.runlocal(eval_config.base_config())
    c.data.source = f"arrayrecord:{mini['out']}"
    train, test, num_classes = classify.labelled_data(c)
    assert (len(train), len(test), num_classes) == (200, 30, 10)
    t = tiny_config(data=dict(source=f"arrayrecord:{mini['out']}"))
    train_config.validate(t)
    t.data.source = "arrayrecord:"
    with pytest.raises(Exception, match="arrayrecord:PATH"):
        train_config.validate(t)


def test_kaggle_layout_class_folders_and_a_flat_val_folder(mini, tmp_path):
    """ILSVRC/Data/CLS-LOC/train/<synset>/*.JPEG + a flat val/ + LOC_val_solution.csv."""
    for name, (synset, data) in mini["train"].items():
        os.makedirs(tmp_path / "train" / synset, exist_ok=True)
        (tmp_path / "train" / name).write_bytes(data)
    os.makedirs(tmp_path / "val")
    for name, (_, data) in mini["val"].items():
        (tmp_path / "val" / name).write_bytes(data)
    out = str(tmp_path / "out")
    meta = imagenet.prepare(out, folder=str(tmp_path / "train"), val_folder=str(tmp_path / "val"),
                            val_labels=str(mini["root"] / "LOC_val_solution.csv"))
    assert meta["classes"] == SYNSETS and meta["splits"]["validation"]["per_class"] == [3] * 10
    for split in ("train", "validation"):  # the same records as from the official tars
        assert [(r["label"], r["image"]) for r in _records(out, split)] == \
            [(r["label"], r["image"]) for r in _records(mini["out"], split)]


def test_max_side_stores_larger_images_shrunk(mini, tmp_path, data_config):
    """--max_side 100 on the miniature ImageNet (60-160 px a side): images with a longer
    side over 100 are stored with it at 100, the aspect kept, close to PIL's antialiased
    resize of the original (one more JPEG encoding); smaller ones keep their bytes; the
    training pipeline reads the result."""
    out = str(tmp_path / "small")
    assert cli.main(["mimjax", "prepare", "imagenet", "--train_tar", str(mini["root"] / "train.tar"), "--out", out,
                     "--examples_per_shard", "64", "--max_side", "100"]) == 0
    assert json.loads(open_text(os.path.join(out, "metadata.json")))["max_side"] == 100
    shrunk = 0
    for r in _records(out, "train"):
        original = Image.open(io.BytesIO(mini["train"][r["path"]][1])).convert("RGB")
        stored = Image.open(io.BytesIO(r["image"]))
        w, h = original.size
        if max(w, h) <= 100:
            assert r["image"] == mini["train"][r["path"]][1]
            continue
        shrunk += 1
        s = 100 / max(w, h)
        assert stored.format == "JPEG" and stored.size == (round(w * s), round(h * s))
        want = np.asarray(original.resize(stored.size, Image.LANCZOS), np.float64)  # an independent filter
        assert np.abs(np.asarray(stored.convert("RGB"), np.float64) - want).mean() < 6  # JPEG 4:2:0 at 100 px: ~4
    assert 40 < shrunk < 200
    it = make_pretrain_iterator(data_config(source=f"arrayrecord:{out}", split="train"), img_size=16,
                                global_batch_size=20, seed=1)
    assert next(it)["image"].shape == (20, 16, 16, 3)


def test_crop_boxes_relative_to_the_image_do_not_depend_on_its_size():
    """What --max_side keeps: RandomResizedCrop's boxes as fractions of the image (area,
    aspect, centre) have the same distribution on a 1500x2000 photo and on it shrunk to
    375x500 (quantiles within 0.02; only the rounding to whole pixels differs)."""
    from mimjax.data import augment

    def rel(H, W, n=3000):
        rng = np.random.default_rng(0)
        b = np.array([augment.crop_box(rng, H, W) for _ in range(n)], np.float64)
        return np.stack([b[:, 2] * b[:, 3] / (H * W), np.log(b[:, 3] / b[:, 2]),
                         (b[:, 0] + b[:, 2] / 2) / H, (b[:, 1] + b[:, 3] / 2) / W], 1)

    big, small = rel(1500, 2000), rel(375, 500)
    for q in (0.1, 0.5, 0.9):
        assert np.abs(np.quantile(big, q, axis=0) - np.quantile(small, q, axis=0)).max() < 0.02
