"""`mimjax prepare imagenet` when its disk or its input is wrong, on the miniature ImageNet of
test_imagenet.py: a disk that fills up (exit 4, one line, the shards written so far removed,
the same command then succeeds), a --max_side no crop fits in, validation labels naming a
class the training split lacks (refused before the first shard), and the summary of a
preparation without a validation split (it suggests only what exists)."""
import contextlib
import io
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest
from scaffold import cli_env, run_cli_here, run_cli_process
from test_imagenet import SYNSETS, make_mini_imagenet

from mimjax import cli
from mimjax.data import imagenet

EXIT_DISK_FULL = 4
PREFIX = "mimjax prepare imagenet: "
# The first class's first image is corrupt: with --strict, writing the train split fails on
# it at once, so an error about anything else proves that check ran before any writing.
CORRUPT = f"{SYNSETS[0]}_0.JPEG"
FOURTH = "ILSVRC2012_val_00000004"  # the validation image whose class the fault tests change


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_tars")
    make_mini_imagenet(str(root), corrupt=CORRUPT)
    return root


def prepare_args(tars, out, *extra):
    return ["prepare", "imagenet", "--train_tar", tars / "train.tar", "--out", out, "--examples_per_shard", "64",
            *extra]


@pytest.fixture(scope="module")
def train_only(tars, tmp_path_factory):
    """The train split alone, prepared: its summary and its shards' bytes."""
    out = tmp_path_factory.mktemp("train_only") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["mimjax", *map(str, prepare_args(tars, out))]) == 0
    shards = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
    return {"summary": printed.getvalue(), "meta": imagenet.read_metadata(str(out)),
            "shards": {f: (out / f).read_bytes() for f in shards}}


def first_overflowing(train_only) -> int:
    """The index of the first shard of the largest size; one before it at least, so that a
    limit just under that size fails the preparation after some shards are complete."""
    sizes = [len(b) for b in train_only["shards"].values()]
    k = sizes.index(max(sizes))
    assert k > 0, sizes
    return k


def assert_disk_full_line(stderr: str, out, reason: str, shards: int):
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert [x for x in stderr.splitlines() if x.startswith(PREFIX)] == [line]
    assert line.startswith(f"{PREFIX}disk full while writing the train split into {out} ({reason}); "
                           f"the {shards} shard file(s) written so far ("), line
    assert line.endswith("are removed; free space (the shards take about as much as the images: ~145 GB for "
                         "ImageNet) and run the same command again"), line


def test_a_file_size_limit_is_a_full_disk_the_shards_are_removed_and_a_rerun_succeeds(tars, train_only, tmp_path,
                                                                                       capsys):
    k = first_overflowing(train_only)
    limit = max(len(b) for b in train_only["shards"].values()) - 1

    def limit_file_size():  # in the child: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    r = run_cli_process(*prepare_args(tars, out), timeout=300, preexec_fn=limit_file_size)
    assert r.returncode == EXIT_DISK_FULL, r.stderr[-3000:]
    assert_disk_full_line(r.stderr, out, "File too large", k + 1)  # k complete shards, then the one that failed
    assert os.listdir(tmp_path) == []  # out was made by the run, and removed with its shards
    status, printed, _ = run_cli_here(capsys, *prepare_args(tars, out))  # space is back: the same command
    assert status == 0 and "train: 199 images in 4 shards" in printed
    assert {f: (out / f).read_bytes() for f in train_only["shards"]} == train_only["shards"]


def test_a_full_tmpfs_is_exit_4_and_leaves_it_empty(tars, train_only, tmp_path):
    """A real ENOSPC: a tmpfs (in a user + mount namespace) with room for the first k shards
    and half of the next."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a private tmpfs")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], check=False,
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"user namespaces unavailable here: {probe.stderr.decode().strip()}")
    k = first_overflowing(train_only)
    sizes = [len(b) for b in train_only["shards"].values()]
    room = (sum(sizes[:k]) + sizes[k] // 2) // 4096 * 4096
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    command = shlex.join([sys.executable, "-m", "mimjax.cli", *map(str, prepare_args(tars, mnt / "out"))])
    script = f"mount -t tmpfs -o size={room} tmpfs {shlex.quote(str(mnt))} && {command}; rc=$?; ls -A {mnt}; exit $rc"
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], check=False,
                       capture_output=True, text=True, timeout=300, env=cli_env())
    assert r.returncode == EXIT_DISK_FULL, r.stderr[-3000:]
    assert_disk_full_line(r.stderr, mnt / "out", "No space left on device", k + 1)
    assert r.stdout == ""  # no summary, and `ls -A` of the tmpfs found nothing left


@pytest.mark.parametrize("side", [1, 31, -1])
def test_a_max_side_no_crop_fits_in_is_refused_before_writing(tars, tmp_path, capsys, side):
    status, printed, lines = run_cli_here(capsys, *prepare_args(tars, tmp_path / "out", "--max_side", side))
    assert (status, printed) == (2, "")
    assert lines == [f"{PREFIX}--max_side={side}: expected 0 (keep the images) or a longer side of at least 32 "
                     f"pixels (224 or more for the ImageNet recipes, whose crops are resized to 224)"]
    assert os.listdir(tmp_path) == []


def _val_class_folders(tars, root, extra: str):
    """A class-per-folder validation set from val.tar, one image moved to the class `extra`."""
    with tarfile.open(tars / "val.tar") as t:
        members = sorted(t.getmembers(), key=lambda m: m.name)
        synsets = (tars / "val_synsets.txt").read_text().split()
        for m, synset in zip(members, synsets):
            folder = root / (extra if m.name.startswith(FOURTH) else synset)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / m.name).write_bytes(t.extractfile(m).read())


@pytest.mark.parametrize("labels", ["synset list", "LOC_val_solution.csv", "class folders"])
def test_a_validation_class_the_train_split_lacks_is_refused_before_writing(tars, tmp_path, capsys, labels):
    """--strict on a train split whose first image is corrupt: had any shard been started, that
    image would be the error."""
    unknown = "n99999999"
    if labels == "class folders":
        _val_class_folders(tars, tmp_path / "val", unknown)
        val = ["--val_folder", tmp_path / "val"]
        want = f"--val_folder={str(tmp_path / 'val')!r}: class folder {unknown!r} is not one of the 10 training classes"
    else:
        name = "val_synsets.txt" if labels == "synset list" else "LOC_val_solution.csv"
        rows = (tars / name).read_text().splitlines()
        i = 3 if labels == "synset list" else next(i for i, r in enumerate(rows) if r.startswith(FOURTH + ","))
        rows[i] = rows[i].replace((tars / "val_synsets.txt").read_text().split()[3], unknown)
        (tmp_path / name).write_text("\n".join(rows) + "\n")
        val = ["--val_tar", tars / "val.tar", "--val_labels", tmp_path / name]
        want = (f"--val_labels gives '{FOURTH}.JPEG' the class {unknown!r}, which is not one of the 10 training "
                f"classes (1 of 30 images have such a class)")
    out = tmp_path / "out"
    status, printed, lines = run_cli_here(capsys, *prepare_args(tars, out, "--strict", *val))
    assert (status, printed) == (2, "")
    assert len(lines) == 1 and lines[0].startswith(PREFIX + want), lines
    assert not out.exists()


def test_the_summary_suggests_only_the_splits_prepared(train_only):
    """Without a validation split the summary names no --test_split validation; with one
    (the same metadata, the split added) it does."""
    summary = train_only["summary"]
    assert "--test_split validation" not in summary and "train: 199 images in 4 shards" in summary
    assert "no validation split was prepared (--val_tar or --val_folder)" in summary
    meta = dict(train_only["meta"])
    meta["splits"] = {**meta["splits"], "validation": meta["splits"]["train"]}
    assert "--test_split validation" in imagenet.summary(meta, "OUT")
    assert "no validation split" not in imagenet.summary(meta, "OUT")
