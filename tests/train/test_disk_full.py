"""A disk that fills up while a run saves: the previous checkpoint survives, the error says so.

Two real kernel limits, no mocks: a per-file size limit (RLIMIT_FSIZE, the write fails
with EFBIG half-way through an async Orbax save) and a small tmpfs that is nearly full
(mounted in a user + mount namespace with `unshare`; skipped where the kernel forbids it).
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
from test_reliability import train_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXIT_DISK_FULL = 4


def limit_file_size(max_bytes):
    def preexec():  # in the child, before exec: writes past max_bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def start(start_cli, workdir, steps, **popen_kwargs):
    """`mimjax train` of the tiny GPA recipe, saving every step (test_reliability.train_args)."""
    return start_cli(*train_args(workdir, steps), stdout=subprocess.DEVNULL, **popen_kwargs)


def steps_on_disk(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.mark.slow
def test_write_failing_mid_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, start_cli):
    wd = str(tmp_path / "run")
    p = start(start_cli, wd, 2)  # checkpoints 1 and 2, complete
    assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    # Step 3's Orbax data file is ~200 KB: with 64 KB files allowed its write fails mid-save.
    p = start(start_cli, wd, 4, preexec_fn=limit_file_size(64 * 1024))
    err = p.stderr.read()
    assert p.wait(timeout=600) == EXIT_DISK_FULL, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("mimjax train: disk full while saving checkpoint step 3"), last
    assert "File too large" in last and f"{os.path.join(wd, 'checkpoints', '2')}, is intact" in last
    assert steps_on_disk(wd) == ["1", "2"]  # the partial step 3 is gone, nothing else touched
    p = start(start_cli, wd, 4)  # space is back: the same command resumes from step 2 and finishes
    err = p.stderr.read()
    assert p.wait(timeout=600) == 0, err[-3000:]
    assert "resumed from step 2" in err and steps_on_disk(wd)[-1] == "4"


def _run_on_nearly_full_tmpfs(mnt, report):
    """Runs inside the namespace: train 2 steps, fill the disk, try 2 more, free it, resume."""
    from scaffold import start_cli_process as start_cli  # tests/scaffold.py: this runs outside pytest

    wd, out = os.path.join(mnt, "run"), {}
    p = start(start_cli, wd, 2)
    out["first"] = p.wait(timeout=600)
    free = shutil.disk_usage(mnt).free
    with open(os.path.join(mnt, "filler"), "wb") as f:  # leave 256 KB: one step needs ~2.7 MB
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, free - 256 * 1024)
    p = start(start_cli, wd, 4)
    out["full_rc"], out["full_err"] = p.wait(timeout=600), p.stderr.read().strip().splitlines()[-1]
    out["full_steps"] = steps_on_disk(wd)
    os.remove(os.path.join(mnt, "filler"))
    p = start(start_cli, wd, 4)
    out["resume_rc"], out["resume_err"] = p.wait(timeout=600), p.stderr.read()[-3000:]
    out["resume_steps"] = steps_on_disk(wd)
    with open(report, "w") as f:
        json.dump(out, f)


@pytest.mark.slow
def test_nearly_full_tmpfs_refuses_the_save_before_writing(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a private tmpfs")
    mnt, report = tmp_path / "mnt", tmp_path / "report.json"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=64m tmpfs {mnt} && cd {REPO} && {sys.executable} -c "
              f"'import sys; sys.path[:0] = [\"tests\", \"tests/train\"]; import test_disk_full as t; "
              f"t._run_on_nearly_full_tmpfs(\"{mnt}\", \"{report}\")'")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], check=False,
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"user namespaces unavailable here: {probe.stderr.decode().strip()}")
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       check=False, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0 and report.exists(), r.stderr[-3000:]
    out = json.loads(report.read_text())
    assert out["first"] == 0
    assert out["full_rc"] == EXIT_DISK_FULL, out["full_err"]
    assert out["full_err"].startswith("mimjax train: disk full while saving checkpoint step 3"), out["full_err"]
    assert "MiB free, this process would write" in out["full_err"]
    assert os.path.join(str(mnt), "run", "checkpoints", "2") + ", is intact" in out["full_err"]
    assert out["full_steps"] == ["1", "2"]
    assert out["resume_rc"] == 0 and "resumed from step 2" in out["resume_err"]
    assert out["resume_steps"][-1] == "4"
