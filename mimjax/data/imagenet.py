"""ImageNet (and any class-per-folder set) as ArrayRecord shards of the encoded JPEG bytes.

`mimjax prepare imagenet` writes, from the official tars (or a class folder), into OUT:

    metadata.json                     classes, per split: examples, shards, skipped members
    train-00000.array_record ...      one record per image (group_size:1, random access)
    validation-00000.array_record ...

and training reads it with `data.source = "arrayrecord:OUT"` (`data.split` = train or
validation), k-NN / linear probe with `arrayrecord:OUT`. No TensorFlow: the records are
written with `array_record` (installed with grain) and read with grain's
`ArrayRecordDataSource`, so the pipeline (sharding, shuffling, resume) is the one folders
use. The JPEG bytes are kept as they are: decoding happens in the pipeline, where the
crop is known (DCT-scaled decode, see augment.py).

`--max_side N` (opt-in, as FFCV stores ImageNet) instead stores every image whose longer
side is over N shrunk to N (antialiased bicubic, re-encoded as JPEG quality 90), so each
training read decodes fewer pixels. What it changes in the augmentation: the crop box is
drawn relative to the image (area fraction and aspect as torchvision's), so the boxes'
distribution over the picture's content is the same; but a box now covers fewer source
pixels, so a crop smaller than 224 px at the stored size is enlarged where it used to be
shrunk (blurrier, no detail beyond N's resolution), and the picture went through one
more JPEG encoding. At N = 512 (about FFCV's setting) ImageNet's usual 500x375 is kept
as it is; only larger photos change. Validation is stored the same way.

A record is: label (int32, little-endian), name length (uint16), the member's name
(UTF-8; "n01440764/n01440764_10026.JPEG"), then the image file's bytes.

Inputs:
- train tar (ILSVRC2012_img_train.tar): a tar of per-class tars `n01440764.tar` ...;
  classes = the sorted synset ids (label = index, the order TFDS and torchvision use).
- validation tar (ILSVRC2012_img_val.tar): flat `ILSVRC2012_val_00000001.JPEG` ..., with
  labels from --val_labels, one of:
  * `LOC_val_solution.csv` (Kaggle's ImageNet: `ImageId,PredictionString`, the synset is
    the first token of the PredictionString);
  * a text file of synset ids, one per line, in image order (line i = image i), or lines
    `FILENAME SYNSET` (space, tab or comma separated);
  * the devkit `ILSVRC2012_devkit_t12.tar.gz` (its 1-based ILSVRC2012_ID ground truth,
    mapped to synsets through its data/meta.mat; needs scipy).
  Integer-only label files are refused: the devkit's ids are not the sorted-synset index.
- --folder DIR (train) and --val_folder DIR (validation): class-per-folder images, or a
  flat --val_folder with --val_labels (Kaggle's layout: ILSVRC/Data/CLS-LOC/{train,val}).

Order is deterministic: classes sorted, members sorted by name inside each class tar /
folder, validation images sorted by name. Everything streams: one image in memory per
worker at a time. Each image is checked by decoding it (at 1/8 scale for JPEGs, fast);
an unreadable one is skipped, counted, named in metadata.json and in the final summary
(`--strict`: an error instead). A truncated or corrupt tar stops with an error naming the
tar and member.

Every check on the inputs (flags, tar listings, validation labels and class folders against
the training classes) runs before the first shard is written. A failure while writing (a
full disk: exit 4; a corrupt member; Ctrl-C) removes the shards this run wrote (and OUT if
it made it), so the same command can simply be run again; only metadata.json, written
last, makes OUT a prepared dataset.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import struct
import tarfile

from mimjax import paths
from mimjax.errors import DiskFullError, UsageError

log = logging.getLogger("mimjax")

FORMAT = "mimjax-arrayrecord-v1"
METADATA = "metadata.json"
WRITER_OPTIONS = "group_size:1,uncompressed"  # random access (what grain expects); JPEGs do not compress
_HEADER = struct.Struct("<iH")
JPEG_EXTENSIONS = (".jpeg", ".jpg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_SYNSET = re.compile(r"^n\d{8}$")
# --max_side below the smallest model input a recipe reads (32 px, `runlocal`) stores images
# no crop can be taken from; below the ImageNet recipes' 224 every crop is an enlargement.
MIN_MAX_SIDE, RECIPE_IMG_SIZE = 32, 224


class PrepareError(UsageError):
    """The input cannot be prepared (truncated tar, unknown label, ...); one line."""


# --- Records -------------------------------------------------------------------------
def encode_record(label: int, name: str, data: bytes) -> bytes:
    n = name.encode("utf-8")[:65535]
    return _HEADER.pack(label, len(n)) + n + data


def decode_record(record: bytes) -> dict:
    """-> {"image": encoded bytes, "label": int, "path": member name}."""
    label, n = _HEADER.unpack_from(record)
    start = _HEADER.size + n
    return {"image": record[start:], "label": label, "path": record[_HEADER.size:start].decode("utf-8")}


# --- Reading -------------------------------------------------------------------------
def read_metadata(root: str) -> dict:
    path = os.path.join(root, METADATA)
    if not os.path.isfile(path):
        raise UsageError(f"arrayrecord:{root}: no {METADATA} there; prepare it with `mimjax prepare imagenet "
                         f"... --out {root}` (an interrupted preparation writes no {METADATA})")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise UsageError(f"arrayrecord:{root}: {METADATA} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class ArrayRecordImages:
    """One split of a prepared directory: `src[i]` -> {"image": bytes, "label", "path"}.
    Random access through grain's `ArrayRecordDataSource` (readers opened lazily, thread
    safe). `classes`: the class names (label = index)."""

    def __init__(self, root: str, split: str = "train"):
        from grain.sources import ArrayRecordDataSource

        self.root, self.split = root, split
        meta = read_metadata(root)
        if split not in meta["splits"]:
            raise UsageError(f"arrayrecord:{root} has no split {split!r}; it has {', '.join(meta['splits'])}")
        info = meta["splits"][split]
        self.classes = list(meta["classes"])
        self.shards = [(s["file"], int(s["num_examples"])) for s in info["shards"] if s["num_examples"]]
        missing = [f for f, _ in self.shards if not os.path.isfile(os.path.join(root, f))]
        if missing:
            raise UsageError(f"arrayrecord:{root}: shard {missing[0]} of split {split!r} is missing "
                             f"({len(missing)} of {len(self.shards)} missing)")
        if not self.shards:
            raise UsageError(f"arrayrecord:{root}: split {split!r} has no images")
        # "file[0:n]": the counts come from metadata.json, no file is opened until read
        self._source = ArrayRecordDataSource([f"{os.path.join(root, f)}[0:{n}]" for f, n in self.shards])
        self._len = sum(n for _, n in self.shards)

    def __len__(self):
        return self._len

    def __getitem__(self, i):
        return decode_record(self._source[i])

    @property
    def what(self) -> str:
        return f"arrayrecord:{self.root} ({self.split})"

    def fingerprint(self) -> dict:
        """As ImageFolder's: the shard list, so a resume on a re-prepared directory warns."""
        h = hashlib.sha256()
        for f, n in self.shards:
            h.update(f"{f}\t{n}\n".encode())
        return {"num_files": self._len, "files_hash": h.hexdigest()[:16]}


# --- Checking an image ----------------------------------------------------------------
def check_image(data: bytes) -> str | None:
    """None if `data` decodes as an image, else a short reason. JPEGs are decoded at 1/8
    scale (libjpeg still reads every entropy-coded block, so truncation is caught)."""
    from PIL import Image

    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason
        if type(e).__name__ == "UnidentifiedImageError":
            return "not a recognised image format"
        return f"{type(e).__name__}: {e}"
    return None


def shrink_image(data: bytes, max_side: int, quality: int = 90) -> bytes:
    """`data` if its longer side is <= max_side, else the image with its longer side
    resized to max_side (PIL's antialiased bicubic, the aspect kept, EXIF rotation
    applied), as an RGB JPEG of `quality` (FFCV's way of storing ImageNet). Raises if
    unreadable."""
    from PIL import Image

    from mimjax.data import images

    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return data
        a = images.to_rgb_uint8(im)
    h, w = a.shape[:2]
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    buf = io.BytesIO()
    Image.fromarray(a).resize(size, Image.BICUBIC).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _check(data: bytes, max_side: int):
    """-> (reason or None, the bytes to store)."""
    reason = check_image(data)
    if reason is None and max_side:
        try:
            data = shrink_image(data, max_side)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a reason
            return f"{type(e).__name__}: {e}", data
    return reason, data


# --- Writing ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Split:
    name: str
    num_examples: int = 0
    shards: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    per_class: dict = dataclasses.field(default_factory=dict)


class ShardWriter:
    """Writes records of one split into `<split>-NNNNN.array_record`, `per_shard` each."""

    def __init__(self, out: str, split: _Split, per_shard: int):
        self.out, self.split, self.per_shard = out, split, per_shard
        self._writer, self._count = None, 0

    def write(self, record: bytes):
        from array_record.python.array_record_module import ArrayRecordWriter

        if self._writer is None:
            name = f"{self.split.name}-{len(self.split.shards):05d}.array_record"
            paths.refuse_link(os.path.join(self.out, name))  # (ArrayRecord's own open would follow it)
            self.split.shards.append({"file": name, "num_examples": 0})  # first: a failed open is removed too
            self._writer = ArrayRecordWriter(os.path.join(self.out, name), WRITER_OPTIONS)
        self._writer.write(record)
        self.split.shards[-1]["num_examples"] += 1
        self.split.num_examples += 1
        if self.split.shards[-1]["num_examples"] >= self.per_shard:
            self.close()

    def close(self):
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _write_split(out: str, split: _Split, items, per_shard: int, workers: int, strict: bool, classes: list,
                 max_side: int = 0):
    """items: iterable of (label, name, bytes-or-reason) in the final order. Checks (and
    with max_side, shrinks) images in a thread pool (in order), writes them; returns
    nothing, fills `split`."""
    writer = ShardWriter(out, split, per_shard)
    pending = []

    def drain(keep: int):
        while len(pending) > keep:
            label, name, data, fut = pending.pop(0)
            reason, data = fut.result() if fut is not None else (data, None)
            if reason is None:
                writer.write(encode_record(label, name, data))
                split.per_class[classes[label]] = split.per_class.get(classes[label], 0) + 1
                if split.num_examples % 10000 == 0:
                    log.info("%s: %d images written", split.name, split.num_examples)
            elif strict:
                raise PrepareError(f"unreadable image {name} ({reason}); without --strict it is skipped and counted")
            else:
                split.skipped.append({"name": name, "reason": reason})
                log.warning("skipping unreadable image %s (%s)", name, reason)

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for label, name, data in items:
                fut = pool.submit(_check, data, max_side) if isinstance(data, bytes) else None
                pending.append((label, name, data, fut))
                drain(4 * max(1, workers))
            drain(0)
    except BaseException:
        with contextlib.suppress(Exception):  # (a full disk fails the close too): the first error is reported
            writer.close()
        raise
    writer.close()


def _tar_members(tar: tarfile.TarFile, where: str):
    """All members of an open tar, naming the last good member if it is truncated/corrupt."""
    members, last = [], None
    try:
        while True:
            m = tar.next()
            if m is None:
                return members
            members.append(m)
            last = m.name
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PrepareError(f"{where} is truncated or corrupt in or after member {last!r} ({type(e).__name__}: {e}); "
                           f"download it again") from e


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo, where: str) -> bytes:
    try:
        f = tar.extractfile(m)
        data = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PrepareError(f"{where}: member {m.name!r} is truncated or corrupt ({type(e).__name__}: {e}); "
                           f"download the tar again") from e
    if len(data) != m.size:
        raise PrepareError(f"{where}: member {m.name!r} is truncated ({len(data)} of {m.size} bytes); "
                           f"download the tar again")
    return data


def _open_tar(path: str, flag: str) -> tarfile.TarFile:
    if not os.path.isfile(path):
        raise PrepareError(f"{flag}={path!r}: no such file")
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PrepareError(f"{flag}={path!r} is not a readable tar ({type(e).__name__}: {e})") from e


def train_tar_classes(path: str):
    """(tar, sorted [(synset, member)]) of the train tar (a tar of per-class tars)."""
    tar = _open_tar(path, "--train_tar")
    inner = sorted((os.path.basename(m.name)[:-4], m) for m in _tar_members(tar, path)
                   if m.isfile() and m.name.endswith(".tar"))
    if not inner:
        raise PrepareError(f"--train_tar={path!r} holds no per-class tars (n01440764.tar ...); is it "
                           f"ILSVRC2012_img_train.tar?")
    return tar, inner


def iter_train_tar(tar: tarfile.TarFile, path: str, inner, classes: list):
    label_of = {c: i for i, c in enumerate(classes)}
    for synset, m in inner:
        where = f"{path}: {m.name}"
        try:
            sub = tarfile.open(fileobj=tar.extractfile(m), mode="r:")  # noqa: SIM115 - closed below
        except (tarfile.TarError, EOFError, OSError) as e:
            raise PrepareError(f"{where} is truncated or corrupt ({type(e).__name__}: {e}); download the tar "
                               f"again") from e
        with sub:
            members = sorted((x for x in _tar_members(sub, where) if x.isfile()), key=lambda x: x.name)
            for x in members:
                if not x.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                yield label_of[synset], f"{synset}/{os.path.basename(x.name)}", _read_member(sub, x, where)


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name.strip()))[0]


def read_val_labels(path: str, names: list[str]) -> dict[str, str]:
    """{image stem: synset} for the validation images `names` (sorted) from --val_labels."""
    if not os.path.isfile(path):
        raise PrepareError(f"--val_labels={path!r}: no such file")
    stems = [_stem(n) for n in names]
    if path.endswith((".tar.gz", ".tgz", ".tar")):
        return _devkit_labels(path, stems)
    with open(path, newline="") as f:
        text = f.read()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):  # LOC_val_solution.csv
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            key = next(k for k in row if k.strip().lower() == "imageid")
            pred = next(k for k in row if k.strip().lower() == "predictionstring")
            out[_stem(row[key])] = row[pred].split()[0]
        return out
    fields = [re.split(r"[\s,]+", ln) for ln in lines]
    if all(len(x) == 1 for x in fields):
        if all(x[0].lstrip("-").isdigit() for x in fields):
            raise PrepareError(f"--val_labels={path!r} holds integers: the devkit's "
                               f"ILSVRC2012_validation_ground_truth.txt ids are not the sorted-synset index; pass "
                               f"the devkit tar (ILSVRC2012_devkit_t12.tar.gz), a LOC_val_solution.csv or synset ids")
        if len(fields) != len(stems):
            raise PrepareError(f"--val_labels={path!r} has {len(fields)} lines, the validation tar "
                               f"{len(stems)} images: one synset per image, in order")
        return dict(zip(stems, (x[0] for x in fields)))
    if all(len(x) == 2 for x in fields):  # FILENAME SYNSET
        return {_stem(a): b for a, b in fields}
    raise PrepareError(f"--val_labels={path!r}: expected LOC_val_solution.csv, one synset per line or "
                       f"`FILENAME SYNSET` lines")


def _devkit_labels(path: str, stems: list[str]) -> dict[str, str]:
    try:
        import scipy.io
    except ImportError as e:
        raise PrepareError("--val_labels: reading the devkit's meta.mat needs scipy (pip install scipy)") from e
    tar = _open_tar(path, "--val_labels")
    files = {os.path.basename(m.name): m for m in _tar_members(tar, path) if m.isfile()}
    for need in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
        if need not in files:
            raise PrepareError(f"--val_labels={path!r} has no {need}; is it ILSVRC2012_devkit_t12.tar.gz?")
    meta = scipy.io.loadmat(io.BytesIO(_read_member(tar, files["meta.mat"], path)), squeeze_me=True)["synsets"]
    wnid = {int(meta["ILSVRC2012_ID"][i]): str(meta["WNID"][i]) for i in range(len(meta))}
    ids = [int(x) for x in _read_member(tar, files["ILSVRC2012_validation_ground_truth.txt"], path).split()]
    if len(ids) != len(stems):
        raise PrepareError(f"--val_labels={path!r}: {len(ids)} ground-truth ids, {len(stems)} validation images")
    return {s: wnid[i] for s, i in zip(stems, ids)}


def val_label_ids(names: list[str], labels: dict, classes: list, where: str) -> list[int]:
    """The class index of each validation image `names` from --val_labels' {stem: synset};
    a PrepareError naming the first image without a label, or with a synset that is not a
    training class, and how many there are (checked before anything is written)."""
    label_of = {c: i for i, c in enumerate(classes)}
    synsets = [labels.get(_stem(n)) for n in names]
    missing = [os.path.basename(n) for n, s in zip(names, synsets) if s is None]
    if missing:
        raise PrepareError(f"--val_labels has no label for {missing[0]!r} of {where} ({len(missing)} of "
                           f"{len(names)} images have none)")
    unknown = [(os.path.basename(n), s) for n, s in zip(names, synsets) if s not in label_of]
    if unknown:
        raise PrepareError(f"--val_labels gives {unknown[0][0]!r} the class {unknown[0][1]!r}, which is not one "
                           f"of the {len(classes)} training classes ({len(unknown)} of {len(names)} images have "
                           f"such a class); expected the synsets of the training split")
    return [label_of[s] for s in synsets]


def iter_val_tar(tar: tarfile.TarFile, path: str, members, label_ids: list[int]):
    for m, label in zip(members, label_ids):
        yield label, os.path.basename(m.name), _read_member(tar, m, path)


def _images_in(directory: str) -> list[str]:
    """Sorted image paths under `directory`, hidden files and folders left out (as
    sources.ImageFolder lists them; not imported from there: sources imports this module)."""
    found = []
    for dirpath, dirnames, names in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, n) for n in names
                  if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def folder_classes(root: str, flag: str) -> list[tuple[str, list[str]]]:
    if not os.path.isdir(root):
        raise PrepareError(f"{flag}={root!r}: expected a class-per-folder directory")
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    out = [(c, _images_in(os.path.join(root, c))) for c in classes]
    if not any(files for _, files in out):
        raise PrepareError(f"{flag}={root!r} holds no class sub-folders with images")
    return out


def check_folder_classes(root: str, per_class, classes: list, flag: str) -> None:
    """A PrepareError naming the first class folder with images that is not a training class."""
    unknown = [c for c, files in per_class if files and c not in classes]
    if unknown:
        raise PrepareError(f"{flag}={root!r}: class folder {unknown[0]!r} is not one of the {len(classes)} "
                           f"training classes ({len(unknown)} such folders)")


def iter_folder(root: str, per_class, classes: list):
    label_of = {c: i for i, c in enumerate(classes)}
    for c, files in per_class:
        for p in files:
            name = os.path.relpath(p, root)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError as e:
                data = f"{type(e).__name__}: {e.strerror or e}"  # a reason: skipped and counted
            yield label_of[c], name, data


def iter_flat_folder(files: list[str], label_ids: list[int]):
    for p, label in zip(files, label_ids):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            data = f"{type(e).__name__}: {e.strerror or e}"
        yield label, os.path.basename(p), data


def prepare(out: str, *, train_tar: str = "", val_tar: str = "", val_labels: str = "", folder: str = "",
            val_folder: str = "", examples_per_shard: int = 1024, workers: int = 0, strict: bool = False,
            max_side: int = 0) -> dict:
    """Writes the splits given into `out` (new or empty) and metadata.json last; returns it.
    max_side > 0 stores images whose longer side exceeds it shrunk to it (`shrink_image`),
    both splits; 0 keeps every file's bytes. Any error while writing removes what this
    call wrote (`_remove_partial`); a full disk is a DiskFullError."""
    if bool(train_tar) == bool(folder):
        raise PrepareError("give exactly one of --train_tar (ILSVRC2012_img_train.tar) and --folder (class folders)")
    if val_tar and not val_labels:
        raise PrepareError("--val_tar needs --val_labels (LOC_val_solution.csv, synsets one per line, or the "
                           "devkit tar)")
    if val_labels and not (val_tar or val_folder):
        raise PrepareError("--val_labels needs --val_tar or a flat --val_folder")
    if val_tar and val_folder:
        raise PrepareError("give at most one of --val_tar and --val_folder")
    if max_side != 0 and max_side < MIN_MAX_SIDE:
        raise PrepareError(f"--max_side={max_side}: expected 0 (keep the images) or a longer side of at least "
                           f"{MIN_MAX_SIDE} pixels ({RECIPE_IMG_SIZE} or more for the ImageNet recipes, whose "
                           f"crops are resized to {RECIPE_IMG_SIZE})")
    if 0 < max_side < RECIPE_IMG_SIZE:
        log.warning("--max_side=%d is below the ImageNet recipes' input size %d: every crop they take is enlarged",
                    max_side, RECIPE_IMG_SIZE)
    if examples_per_shard < 1:
        raise PrepareError(f"--examples_per_shard={examples_per_shard}: expected a positive number")
    from mimjax import workdir as workdir_lib  # never inside a run directory's checkpoints/

    try:
        workdir_lib.check_output(out, "--out")
    except ValueError as e:
        raise PrepareError(str(e)) from None
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise PrepareError(f"--out={out!r} exists and is not an empty directory (a killed preparation "
                           f"leaves shards without {METADATA}: delete it and run again)")
    workers = workers or min(32, os.cpu_count() or 1)
    # Everything that can fail on the inputs' listing fails before anything is written.
    if train_tar:
        tar, inner = train_tar_classes(train_tar)
        classes = [s for s, _ in inner]
        train_items = iter_train_tar(tar, train_tar, inner, classes)
    else:
        per_class = folder_classes(folder, "--folder")
        classes = [c for c, files in per_class if files]
        train_items = iter_folder(folder, [(c, f) for c, f in per_class if f], classes)
    val_items = None
    if val_tar:
        vtar = _open_tar(val_tar, "--val_tar")
        members = sorted((m for m in _tar_members(vtar, val_tar)
                          if m.isfile() and m.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda m: m.name)
        names = [m.name for m in members]
        label_ids = val_label_ids(names, read_val_labels(val_labels, names), classes, val_tar)
        val_items = iter_val_tar(vtar, val_tar, members, label_ids)
    elif val_folder and val_labels:  # flat, e.g. Kaggle's ILSVRC/Data/CLS-LOC/val + LOC_val_solution.csv
        if not os.path.isdir(val_folder):
            raise PrepareError(f"--val_folder={val_folder!r}: no such directory")
        files = sorted(os.path.join(val_folder, n) for n in os.listdir(val_folder)
                       if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
        label_ids = val_label_ids(files, read_val_labels(val_labels, files), classes, val_folder)
        val_items = iter_flat_folder(files, label_ids)
    elif val_folder:
        per_val_class = folder_classes(val_folder, "--val_folder")
        check_folder_classes(val_folder, per_val_class, classes, "--val_folder")
        val_items = iter_folder(val_folder, per_val_class, classes)
    made_out = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    splits, writing = [], out
    try:
        for name, items in (("train", train_items), ("validation", val_items)):
            if items is None:
                continue
            split = _Split(name)
            splits.append(split)
            writing = f"the {name} split into {out}"
            _write_split(out, split, items, examples_per_shard, workers, strict, classes, max_side)
            log.info("%s: %d images in %d shards, %d skipped", name, split.num_examples, len(split.shards),
                     len(split.skipped))
        meta = {"format": FORMAT,
                "record": "int32 label (little-endian), uint16 name length, name (UTF-8), encoded image bytes",
                "classes": classes, "max_side": max_side,
                "source": {"train_tar": os.path.basename(train_tar) if train_tar else "", "folder": folder,
                           "val_tar": os.path.basename(val_tar) if val_tar else "", "val_folder": val_folder,
                           "val_labels": os.path.basename(val_labels) if val_labels else ""},
                "splits": {s.name: {"num_examples": s.num_examples, "num_skipped": len(s.skipped),
                                    "per_class": [s.per_class.get(c, 0) for c in classes],
                                    "shards": s.shards, "skipped": s.skipped} for s in splits}}
        writing = os.path.join(out, METADATA)
        paths.write_text(writing, json.dumps(meta, indent=1))  # whole, never through a link
    except BaseException as e:
        shards, size = _remove_partial(out, splits, made_out)
        full = paths.disk_full_reason(e)
        if full is None:
            raise
        raise DiskFullError(f"disk full while writing {writing} ({full}); the {shards} shard file(s) written "
                            f"so far ({size / 2**20:.1f} MiB) are removed; free space (the shards take about as "
                            f"much as the images: ~145 GB for ImageNet) and run the same command again") from e
    return meta


def _remove_partial(out: str, splits: list, made_out: bool) -> tuple[int, int]:
    """Removes the shards of `splits` (this run's: `out` was empty) and `out` if this run
    made it; -> (shards removed, their bytes)."""
    shards = size = 0
    for split in splits:
        for shard in split.shards:
            p = os.path.join(out, shard["file"])
            if os.path.isfile(p) and not os.path.islink(p):
                shards, size = shards + 1, size + os.path.getsize(p)
                os.remove(p)
    if made_out:
        with contextlib.suppress(OSError):  # (not empty: something else wrote there meanwhile)
            os.rmdir(out)
    return shards, size


def summary(meta: dict, out: str) -> str:
    rows = [f"wrote {out}: {len(meta['classes'])} classes"]
    for name, s in meta["splits"].items():
        rows.append(f"  {name}: {s['num_examples']} images in {len(s['shards'])} shards, "
                    f"{s['num_skipped']} unreadable skipped"
                    + (" (" + "; ".join(f"{x['name']}: {x['reason']}" for x in s["skipped"][:5])
                       + ("; ..." if s["num_skipped"] > 5 else "") + ")" if s["num_skipped"] else ""))
    has = {name for name, s in meta["splits"].items() if s["num_examples"]}
    if "train" in has:
        rows.append(f'train with --config.data.source="arrayrecord:{out}"'
                    + (f"; evaluate with --dataset arrayrecord:{out} --test_split validation" if "validation" in has
                       else "; no validation split was prepared (--val_tar or --val_folder): evaluate on "
                            "a separate labelled set with --test_dataset"))
    return "\n".join(rows)
