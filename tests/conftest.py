"""What the tests share: CPU-only JAX, compiled for speed, with one compilation cache for the
whole run, the tiny config, the `mimjax` command in a fresh process, and a trained tiny run
directory."""
import atexit
import os
import shutil
import sys
import tempfile

import pytest

# Tests run on CPU; keep JAX off accelerators so numbers are reproducible in CI.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))  # for the numpy reference helpers

from gcs_emulator import gcs_bucket, gcs_server  # noqa: E402,F401  (fixtures: a GCS emulator)
from scaffold import make_tiny_config, run_cli_process, start_cli_process  # noqa: E402,F401


def _share_one_compilation_cache():
    """One JAX persistent compilation cache, in a fresh folder, for this test run: the pytest
    process and every `mimjax` process it starts (they inherit the environment) compile the
    same tiny train step dozens of times; from the second time on it is read from disk. A
    cached program is the compiled program itself, so results stay bitwise the same. Every
    program is cached, however small or quick to compile. A folder the user chose is kept."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="mimjax-tests-jax-cache-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    if "jax" in sys.modules:  # imported before this file (a plugin): JAX read its flags already
        import jax
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                          int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


_share_one_compilation_cache()


def _compile_for_speed():
    """XLA's CPU backend at its lowest LLVM optimisation level, for this run and every process
    it starts: the tests compile hundreds of tiny programs and run each for a few steps, and
    the tiny GPA-MAE train step then compiles in 9.5 s instead of 19 s (init 3.4 s instead of
    11 s; 2-core AMD EPYC). Every process of a test compiles the same way, so bitwise
    comparisons between runs still hold; comparisons with NumPy and PyTorch keep their
    tolerances. An XLA_FLAGS that already names the level is kept."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


_compile_for_speed()


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_config(gpa=False, **over) -> the tiny pre-training config (make_tiny_config)."""
    return make_tiny_config


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(*args, devices=None, env=None, cwd=REPO, timeout=900) -> CompletedProcess of
    `mimjax ARGS` in a fresh process (devices: how many CPU devices it sees)."""
    return run_cli_process


@pytest.fixture(scope="session")
def start_cli():
    """start_cli(*args, devices=None, env=None, cwd=REPO, **popen_kwargs) -> the Popen of
    `mimjax ARGS` started in a fresh process, for a test that signals or watches it."""
    return start_cli_process


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished 2-step run of the tiny MAE config (checkpoint at step 2), for tests that
    only read a run directory (eval, fine-tuning, a checkpoint teacher). They may add their
    own result files (knn.json, linprobe.json) but change nothing the run wrote."""
    from mimjax.train import pretrain

    workdir = str(tmp_path_factory.mktemp("trained_run"))
    pretrain.train(make_tiny_config(total_steps=2), workdir)
    return workdir
