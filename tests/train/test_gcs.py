"""Run directories on an object store (gs://): train, kill -9, resume, export, visualize,
all against a real GCS emulator (tests/gcs_emulator.py), checked through etils.epath."""
import json
import os
import signal
import time

import pytest
from etils import epath

from gcs_emulator import forget_listings
from mimjax import paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/gpa_mae.py:vit_tiny_patch16,runlocal"


def train_args(workdir, steps, *extra):
    return ("train", "--config", CONFIG, "--workdir", workdir, f"--config.total_steps={steps}", "--config.log_every=1",
            "--config.checkpoint_every=2", "--config.snapshot_every=2", *extra)


def finished(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{err[-4000:]}"
    return out, err


def names(path) -> set:
    forget_listings()
    return {p.name for p in epath.Path(path).iterdir()}


@pytest.mark.slow
def test_train_kill_resume_export_visualize_in_a_bucket(gcs_bucket, tmp_path, start_cli):
    run = f"{gcs_bucket}/run"
    ckpts = epath.Path(run) / "checkpoints"

    # 1. Train (a long run) and kill -9 once step 2's checkpoint is committed in the bucket.
    p = start_cli(*train_args(run, 1000))
    t0 = time.time()
    while not (ckpts / "2" / "commit_success.txt").exists():
        assert p.poll() is None, f"train exited {p.returncode}:\n{p.stderr.read()[-4000:]}"
        assert time.time() - t0 < 600, "checkpoint 2 never committed"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    forget_listings()
    assert (epath.Path(run) / "config.json").exists() and (epath.Path(run) / "config_history.jsonl").exists()
    assert not any(n.startswith("gs:") for n in os.listdir(REPO)), "a local folder named gs: was made"

    # 2. Resume to 6 from the checkpoint in the bucket (total_steps may change on resume).
    _, err = finished(start_cli(*train_args(run, 6)))
    assert "resumed from step" in err, err[-3000:]
    resumed = int(err.split("resumed from step", 1)[1].split()[0])
    assert resumed >= 2
    steps = sorted(int(n) for n in names(ckpts) if n.isdigit())
    assert steps[-1] == 6 and all((ckpts / str(s) / "commit_success.txt").exists() for s in steps)
    history = (epath.Path(run) / "config_history.jsonl").read_text().splitlines()
    assert len(history) == 2 and json.loads(history[-1])["config"]["total_steps"] == 6
    assert json.loads((epath.Path(run) / "config.json").read_text())["total_steps"] == 6
    top = names(run)
    assert {"config.json", "config_history.jsonl", "checkpoints", "snapshots", "metrics.jsonl", "tb",
            "curves.png"} <= top and "run.lock" not in top, top
    snaps = names(f"{run}/snapshots")
    assert "step_0000006.png" in snaps and (epath.Path(run) / "snapshots" / "step_0000006.png").read_bytes()[:4] == b"\x89PNG"

    # 3. Export from the bucket into the bucket, and read it back.
    out = f"{gcs_bucket}/export/vit.safetensors"
    finished(start_cli("export", "--workdir", run, "--format", "timm", "--out", out))
    from safetensors.numpy import load

    sd = load(epath.Path(out).read_bytes())
    assert "patch_embed.proj.weight" in sd and len(sd) > 10
    meta = json.loads(epath.Path(out + ".json").read_text())
    assert meta["source_workdir"] == run

    # 4. Visualize from the bucket into the bucket.
    vis = f"{gcs_bucket}/vis"
    finished(start_cli("visualize", "--workdir", run, "--out", vis, "--num_images", "2"))
    assert {"reconstruction.png"} <= names(vis)
    assert (epath.Path(vis) / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"


def test_unreachable_bucket_fails_in_one_line_naming_the_path(gcs_bucket, start_cli):
    missing = "gs://no-such-bucket-here/run"
    p = start_cli("train", "--config", CONFIG, "--workdir", missing, "--config.total_steps=1")
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0
    lines = [line for line in err.strip().splitlines() if "gs://no-such-bucket-here" in line]
    assert lines and "Traceback" not in err, err[-3000:]
    assert not os.path.exists(os.path.join(REPO, "gs:"))


def test_unreachable_store_fails_fast():
    from mimjax.schema import ConfigError

    env = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:1"  # nothing listens there
    try:
        t0 = time.time()
        with pytest.raises(ConfigError, match=r"--workdir 'gs://b/run': cannot connect"):
            paths.check_reachable("gs://b/run", "--workdir")
        assert time.time() - t0 < 15
    finally:
        if env is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = env


def test_local_paths_are_handled_exactly_as_before(tmp_path):
    d = str(tmp_path / "run")
    assert not paths.is_remote(d) and not paths.is_remote("file:///x") and paths.is_remote("gs://b/x")
    assert paths.absolute("rel") == os.path.abspath("rel")
    assert paths.absolute("gs://b/run/") == "gs://b/run"
    assert paths.join(d, "a", "b") == os.path.join(d, "a", "b")
    assert paths.join("gs://b/run/", "checkpoints", "2") == "gs://b/run/checkpoints/2"
    paths.makedirs(d)
    paths.write_text(os.path.join(d, "h"), "a\n")
    paths.append_text(os.path.join(d, "h"), "b\n")
    assert open(os.path.join(d, "h")).read() == "a\nb\n"
    paths.check_reachable(d, "--workdir")  # nothing to check locally
    from mimjax.workdir import RunLock

    lock = RunLock.acquire(d)  # a real flock locally
    assert lock.fd is not None and os.path.exists(os.path.join(d, "run.lock"))
    lock.release()
    assert not os.path.exists(os.path.join(d, "run.lock"))


def test_remote_run_lock_is_not_enforced_and_says_so(gcs_bucket, caplog):
    from mimjax.workdir import RunLock

    with caplog.at_level("WARNING", logger="mimjax"):
        lock = RunLock.acquire(f"{gcs_bucket}/run")
    assert lock.fd is None and "not enforced" in caplog.text
    lock.release()
    assert names(gcs_bucket) == set()  # nothing written


def test_checkpointer_in_a_bucket_lists_only_committed_steps(gcs_bucket):
    import numpy as np

    from mimjax.train.checkpoint import Checkpointer, complete_steps, load_state

    d = f"{gcs_bucket}/run/checkpoints"
    ck = Checkpointer(d, keep=2, async_save=False)
    for s in (1, 2, 3):
        ck.save(s, {"params": {"w": np.full(3, float(s))}}, {"pos": s})
        ck.wait()
    ck.close()
    paths.write_text(f"{d}/4/state/partial", "x")  # a step killed mid-save: no commit_success.txt
    assert complete_steps(d) == [2, 3]
    np.testing.assert_array_equal(load_state(d)["params"]["w"], np.full(3, 3.0))
    ck = Checkpointer(d, keep=2, async_save=False)
    ck._quarantine(3, ValueError("test"))  # moved aside (copy + delete on an object store)
    assert complete_steps(d) == [2] and "3.unreadable" in names(d)
    ck.close()
