"""Unreadable images through the `mimjax` command: a source that is (mostly) unreadable stops
with one line (exit 2) instead of skipping forever; a few broken or vanished files are
skipped and counted; a resume names a changed file list."""
import os
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from mimjax.data.pipeline import make_pretrain_iterator
from mimjax.errors import DataError
from mimjax.train import metrics

CONFIG = "configs/gpa_mae.py:vit_tiny_patch16,runlocal"
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n"


def write_images(folder, n, start=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(os.path.join(folder, f"ok{i:03d}.jpg"))


def write_broken(folder, n):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        with open(os.path.join(folder, f"broken{i:03d}.jpg"), "w") as f:
            f.write(LFS_POINTER)


def train_args(workdir, folder, steps, *extra):
    return ["train", "--config", CONFIG, "--workdir", str(workdir), "--config.data.source=folder",
            f"--config.data.folder={folder}", f"--config.total_steps={steps}", *extra]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("mimjax train:")]


def test_all_unreadable_folder_fails_fast_in_process(tmp_path, data_config):
    write_broken(tmp_path, 40)
    it = make_pretrain_iterator(data_config(source="folder", folder=str(tmp_path)), img_size=16,
                                global_batch_size=8, seed=0)
    with pytest.raises(DataError, match=r"0 read, \d+ skipped"):
        next(it)


def test_small_unreadable_folder_fails_after_one_pass(tmp_path, data_config):
    write_broken(tmp_path, 9)  # fewer than MIN_TRIED: the full-pass rule stops it
    it = make_pretrain_iterator(data_config(source="folder", folder=str(tmp_path)), img_size=16,
                                global_batch_size=8, seed=0)
    with pytest.raises(DataError, match="no image could be read"):
        next(it)


def test_forty_lfs_pointers_exit_2_with_one_line(tmp_path, run_cli):
    folder = tmp_path / "images"
    write_broken(folder, 40)
    t0 = time.time()
    p = run_cli(*train_args(tmp_path / "w", folder, 6), timeout=120)
    assert time.time() - t0 < 60
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = error_lines(p.stderr)
    assert len(lines) == 1, p.stderr[-3000:]
    assert "0 read" in lines[0] and "skipped" in lines[0] and "broken" in lines[0] and "git lfs pull" in lines[0]
    assert p.stderr.count("skipping unreadable image") <= 40  # once per file at most, not forever


@pytest.mark.slow
def test_a_few_broken_files_are_skipped_and_counted(tmp_path, run_cli):
    folder = tmp_path / "images"
    write_images(folder, 30)
    write_broken(folder, 2)
    p = run_cli(*train_args(tmp_path / "w", folder, 6))  # 48 images: more than one pass, so both are tried
    assert p.returncode == 0, p.stderr[-3000:]
    assert metrics.read_metrics(str(tmp_path / "w" / "metrics.jsonl"))[-1]["skipped_images"] >= 2
    assert "broken000.jpg" in p.stderr and "broken001.jpg" in p.stderr


@pytest.mark.slow
def test_file_deleted_mid_run_is_skipped_and_counted(tmp_path, start_cli):
    folder, wd = tmp_path / "images", tmp_path / "w"
    write_images(folder, 32)
    p = start_cli(*train_args(wd, folder, 16, "--config.log_every=1", "--config.checkpoint_every=1000"),
                  stdout=subprocess.DEVNULL)
    path, t0 = wd / "metrics.jsonl", time.time()
    while not (path.exists() and metrics.read_metrics(str(path))) and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    os.remove(folder / "ok007.jpg")  # read again in the next epochs (16 steps x 8 = 4 passes)
    _, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "ok007.jpg" in stderr and "FileNotFoundError" in stderr
    assert metrics.read_metrics(str(path))[-1]["skipped_images"] >= 1


@pytest.mark.slow
def test_resume_after_adding_files_says_the_file_list_changed(tmp_path, run_cli):
    folder, wd = tmp_path / "images", tmp_path / "w"
    write_images(folder, 32)
    first = run_cli(*train_args(wd, folder, 3))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "file list changed" not in first.stderr
    write_images(folder, 3, start=100)
    second = run_cli(*train_args(wd, folder, 5))
    assert second.returncode == 0, second.stderr[-3000:]
    changed = [line for line in second.stderr.splitlines() if "file list changed" in line]
    assert len(changed) == 1 and "32 files then, 35 now: 3 added" in changed[0], second.stderr[-3000:]
    assert "resumed from step 3" in second.stderr
