"""The environment a `mimjax` command starts in (mimjax/jaxenv.py): a JAX_PLATFORMS or XLA_FLAGS
that JAX or XLA would fail on is one line, exit 2, before any work; on a machine with no TPU
the command does not load libtpu (no `E0000 ... TPU_WORKER_HOSTNAMES` lines), and on a TPU
host it leaves JAX's TPU discovery alone."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import scaffold

from mimjax import jaxenv

LIBTPU = importlib.util.find_spec("libtpu") is not None
TPU_LINES = re.compile(r"E0000|TPU_WORKER_HOSTNAMES|TPU_ACCELERATOR_TYPE|libtpu")


def mimjax(*args, env, cwd):
    """`mimjax ARGS` in a fresh process (the console script's path: the entry point's
    environment first) with this process's environment, `env` on top (None: removed)."""
    full = {k: v for k, v in {**scaffold.cli_env(), jaxenv.AUTO_MARK: None, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "mimjax.cli", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


FLAGS = os.environ.get("XLA_FLAGS", "")
TRAIN = ("train", "--config", "demo", "--workdir", "W", "--config.total_steps=1")
EXPORT = ("export", "--workdir", "W", "--format", "timm", "--out", "out.safetensors")  # parsed without JAX: fast
BAD_ENV = [  # (command, environment, what the line says): left to JAX and XLA, a traceback or an abort each
    pytest.param(TRAIN, {"JAX_PLATFORMS": "cuda"}, "JAX_PLATFORMS=cuda: no NVIDIA GPU is visible", id="cuda",
                 marks=pytest.mark.skipif(jaxenv.nvidia_gpu_visible(), reason="this machine has an NVIDIA GPU")),
    pytest.param(TRAIN, {"XLA_FLAGS": f"{FLAGS} --xla_no_such_flag=1"},
                 "XLA_FLAGS: unknown XLA flag '--xla_no_such_flag=1'", id="xla-flag"),
    pytest.param(EXPORT, {"JAX_PLATFORMS": "banana"}, "JAX_PLATFORMS=banana: unknown platform 'banana'; expected a "
                 "comma-separated list of the platforms installed here (cpu", id="banana"),
    pytest.param(EXPORT, {"XLA_FLAGS": "xla_dump_to=/tmp/d"}, "XLA_FLAGS='xla_dump_to=/tmp/d': XLA reads a value not "
                 "starting with '-' as a file of flags", id="xla-file"),
]


@pytest.mark.parametrize("args,env,line", BAD_ENV)
def test_a_bad_platform_or_xla_flag_is_one_line_before_any_work(tmp_path, args, env, line):
    p = mimjax(*args, env=env, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith(f"mimjax {args[0]}: {line}"), p.stderr
    assert "expected" in p.stderr and os.listdir(tmp_path) == []  # nothing written


@pytest.fixture(scope="module")
def flags_cache(tmp_path_factory):
    """A cache folder of this module's own, and the XLA flags known (read once into it)."""
    folder = str(tmp_path_factory.mktemp("cache"))
    known = jaxenv.known_xla_flags(os.environ, cache_dir=folder)
    if known is None:
        pytest.skip("no XLA library with flag names found")
    return folder, known


def test_a_misspelt_xla_flag_gets_a_suggestion_and_every_flag_mimjax_uses_is_known(flags_cache):
    folder, known = flags_cache
    line = jaxenv.xla_flags_error("--xla_cpu_enable_fast_mat=true", os.environ, cache_dir=folder)
    assert "(did you mean --xla_cpu_enable_fast_math?)" in line
    used = set()
    for top in ("mimjax", "tests", "scripts", "docs", "launch", "bench"):
        for root, _, files in os.walk(os.path.join(scaffold.REPO, top)):
            for f in files:
                if f.endswith((".py", ".sh", ".md", ".sbatch")):
                    used |= set(re.findall(r"--(xla_[a-z0-9_]+)=", open(os.path.join(root, f)).read()))
    used -= {"xla_no_such_flag", "xla_cpu_enable_fast_mat"}  # this file's bad examples
    assert len(used) >= 8 and not used - known, sorted(used - known)


def test_the_known_flags_are_cached_per_library_version(flags_cache, monkeypatch):
    folder, known = flags_cache
    (cache,) = os.listdir(folder)

    def no_reading(*_a, **_k):
        raise AssertionError("the libraries were read again")

    monkeypatch.setattr(jaxenv.mmap, "mmap", no_reading)
    assert jaxenv.known_xla_flags(os.environ, cache_dir=folder) == known
    libs = jaxenv.xla_libraries(os.environ)
    monkeypatch.setattr(jaxenv, "xla_libraries", lambda env: libs[:1])  # another set of libraries: another key
    with pytest.raises(AssertionError, match="read again"):
        jaxenv.known_xla_flags(os.environ, cache_dir=folder)
    with open(os.path.join(folder, cache), "w") as f:  # an unreadable cache is read past, not trusted
        f.write("not a cache\n")
    monkeypatch.setattr(jaxenv, "xla_libraries", lambda env: libs)
    with pytest.raises(AssertionError, match="read again"):
        jaxenv.known_xla_flags(os.environ, cache_dir=folder)


def test_platforms_as_jax_reads_them(monkeypatch):
    monkeypatch.setattr(jaxenv, "installed_platforms", lambda env: ["tpu"])
    monkeypatch.setattr(jaxenv, "nvidia_gpu_visible", lambda: False)
    err = lambda v: jaxenv.platforms_error(v, {})  # noqa: E731
    assert err("cpu") is err("") is err("tpu,cpu") is err("cuda,cpu") is None  # JAX skips CUDA without a GPU
    assert "no NVIDIA GPU is visible" in err("cuda")
    assert "unknown platform ' cpu'" in err("tpu, cpu")  # JAX does not strip the names
    assert "'gpu' stands for cuda, rocm, oneapi together, and JAX's rocm plugin is not installed" in err("gpu")
    monkeypatch.setattr(jaxenv, "nvidia_gpu_visible", lambda: True)
    assert "JAX's CUDA plugin is not installed" in err("cuda,cpu")
    monkeypatch.setattr(jaxenv, "installed_platforms", lambda env: [])
    assert "libtpu is not installed" in err("tpu")
    monkeypatch.setattr(jaxenv, "installed_platforms", lambda env: None)  # an unknown plugin: its name may be any
    assert err("metal") is None


def test_a_backend_jax_cannot_start_is_one_line_naming_the_users_variable():
    e = RuntimeError("Unable to initialize backend 'tpu': NOT_FOUND: TPU initialization failed: No jellyfish "
                     "device found. (set JAX_PLATFORMS='' to automatically choose an available backend)")
    assert jaxenv.backend_error(e, {"JAX_PLATFORMS": "tpu"}) == (
        "JAX_PLATFORMS=tpu: Unable to initialize backend 'tpu': NOT_FOUND: TPU initialization failed: No jellyfish "
        "device found; expected platforms this machine can start, or JAX_PLATFORMS unset")
    mine = {"JAX_PLATFORMS": "cpu", jaxenv.AUTO_MARK: "cpu"}
    assert jaxenv.backend_error(e, mine) is None
    assert jaxenv.backend_error(ValueError("x"), {"JAX_PLATFORMS": "tpu"}) is None


def test_tpu_host_by_device_files_or_a_tpu_vms_variables(tmp_path):
    assert not jaxenv.tpu_host({"TPU_SKIP_MDS_QUERY": "1", "TPU_LIBRARY_PATH": "/x"}, root=str(tmp_path))  # JAX's
    assert jaxenv.tpu_host({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, root=str(tmp_path))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "accel0").touch()  # TPU v4
    assert jaxenv.tpu_host({}, root=str(tmp_path))
    (tmp_path / "dev" / "accel0").unlink()
    (tmp_path / "dev" / "vfio").mkdir()  # TPU v5e and later
    assert jaxenv.tpu_host({}, root=str(tmp_path))


# `mimjax train` on a folder that does not exist: JAX starts its backend, then one line, exit 2.
START_BACKEND = ("train", "--config", "demo", "--workdir", "W", "--config.data.source=folder",
                 "--config.data.folder=/no/such/folder")


@pytest.mark.skipif(not LIBTPU, reason="libtpu is not installed: nothing would print TPU lines")
def test_no_tpu_lines_on_a_machine_without_a_tpu_and_discovery_on_a_tpu_host(tmp_path):
    if jaxenv.tpu_host(os.environ):
        pytest.skip("this machine may have a TPU")
    p = mimjax(*START_BACKEND, env={"JAX_PLATFORMS": None}, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("mimjax train: config error: config.data.folder"), p.stderr
    assert not TPU_LINES.search(p.stderr), p.stderr
    # A TPU VM's variable set: the entry point leaves JAX_PLATFORMS unset, and JAX looks for the TPU.
    code = "import os; print(os.environ.get('JAX_PLATFORMS', 'unset'))"
    for env, want in [({"TPU_WORKER_ID": "0"}, "unset"), ({}, "cpu"), ({"JAX_PLATFORMS": "tpu,cpu"}, "tpu,cpu")]:
        env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", jaxenv.AUTO_MARK)} | env
        out = subprocess.run([sys.executable, "-m", "mimjax.procenv", sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want, (env, out.stdout)
