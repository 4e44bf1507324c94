"""JAX_PLATFORMS and XLA_FLAGS, read before JAX starts: standard library only, nothing of
JAX imported (the `mimjax` command calls these; mimjax/procenv.py for the rest of the
process environment).

- `check(env)`: a JAX_PLATFORMS naming a platform JAX does not know or this machine lacks,
  or an XLA_FLAGS naming a flag XLA does not know, is one line (UsageError, exit 2) before
  any work. Left to JAX, `JAX_PLATFORMS=cuda` without CUDA is a bare AssertionError,
  `JAX_PLATFORMS=banana` a RuntimeError traceback, and a bogus XLA flag a fatal abort of the
  process ("Unknown flag in XLA_FLAGS") when JAX starts its backend.
- `no_tpu_platforms(env)`: on a machine with no TPU but libtpu installed (`bash
  scripts/test.sh` installs it, for `mimjax plan`), JAX loads libtpu, which prints five
  `E0000 ... INVALID_ARGUMENT ... TPU_WORKER_HOSTNAMES` lines looking for a TPU. The entry
  point then sets JAX_PLATFORMS to the installed platforms without tpu ("cpu", "cuda,cpu"),
  so libtpu is never loaded; on a TPU host (`tpu_host`) nothing changes.
- `backend_error(e, env)`: what `check` cannot foresee (a GPU whose driver fails, TPU chips
  busy) as one line naming JAX_PLATFORMS, when the user set it.

The XLA flags known are every `xla_...` name in the bytes of the XLA libraries installed
(jaxlib's, libtpu's, each PJRT plugin's): a superset of the flags (it holds other
identifiers too), so a real flag is never refused; a misspelt one is. Reading jaxlib's
350 MB takes 0.15 s from the page cache, so the list is cached per library path, size and
mtime in ~/.cache/mimjax/ ($XDG_CACHE_HOME): a later command reads it in about a millisecond.
"""
from __future__ import annotations

import difflib
import glob
import hashlib
import importlib.util
import mmap
import os
import re

from mimjax.errors import UsageError

# Set by the entry point next to the JAX_PLATFORMS it chose, so that a JAX_PLATFORMS equal to
# it is known to be mimjax's, not the user's (`users_platforms`).
AUTO_MARK = "MIMJAX_AUTO_JAX_PLATFORMS"
# A TPU VM's own variables (Cloud TPU, GKE); JAX's own TPU_SKIP_MDS_QUERY / TPU_LIBRARY_PATH,
# which a process that imported JAX passes on to its children, say nothing of the machine.
TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "TPU_NAME", "JAX_FORCE_TPU_INIT")
# TPU chips' device files: /dev/accel* (v2-v4), /dev/vfio/ (v5e and later).
TPU_DEVICES = ("dev/accel*", "dev/vfio")
NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")  # JAX's own test (jax/_src/hardware_utils.py)
PLUGIN_KINDS = ("cuda", "rocm")  # PJRT plugins named after the platform they register (jax_plugins.xla_cuda12)
KNOWN = ("cpu", "tpu", "cuda", "rocm", "oneapi")  # the platforms JAX knows by name, installed or not
ALIASES = {"gpu": ("cuda", "rocm", "oneapi")}  # JAX expands "gpu" into all three
INSTALL = {"tpu": 'libtpu is not installed (pip install -e ".[tpu]" -c requirements.txt)',
           "cuda": 'JAX\'s CUDA plugin is not installed (pip install -e ".[gpu]" -c requirements.txt)'}
FLAG_CACHE_VERSION = "mimjax xla flags 1"


# --- Platforms -------------------------------------------------------------------------
def tpu_host(env, root: str = "/") -> bool:
    """Cheap evidence that this machine may have a TPU: its chips' device files or a TPU
    VM's variables. The GCE metadata server is not asked (unreachable offline, and slow)."""
    return (any(env.get(k) for k in TPU_ENV)
            or any(glob.glob(os.path.join(root, pattern)) for pattern in TPU_DEVICES))


def nvidia_gpu_visible() -> bool:
    return any(map(os.path.exists, NVIDIA_DEVICES))


def _plugin_modules() -> list[str]:
    """The PJRT plugins JAX will load: modules in the `jax_plugins` namespace package and
    `jax_plugins` entry points (as jax/_src/xla_bridge.py discovers them)."""
    import importlib.metadata
    import pkgutil

    spec = importlib.util.find_spec("jax_plugins")
    names = [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)] if spec else []
    return names + [ep.value.rsplit(".", 1)[-1] for ep in importlib.metadata.entry_points(group="jax_plugins")]


def _libtpu_installed(env) -> bool:
    return importlib.util.find_spec("libtpu") is not None or os.path.isfile(env.get("TPU_LIBRARY_PATH", ""))


def installed_platforms(env) -> list[str] | None:
    """The platforms JAX may start here besides the CPU, from what is installed: tpu (libtpu),
    cuda, rocm (their PJRT plugins) and those named in PJRT_NAMES_AND_LIBRARY_PATHS; None when
    a plugin of another kind is installed (its platform's name is known only once loaded)."""
    out = ["tpu"] if _libtpu_installed(env) else []
    for module in _plugin_modules():
        kind = next((k for k in PLUGIN_KINDS if k in module), None)
        if kind is None:
            return None
        if kind not in out:
            out.append(kind)
    out += [item.split(":")[0] for item in env.get("PJRT_NAMES_AND_LIBRARY_PATHS", "").split(",") if item]
    return out


def no_tpu_platforms(env, *, tpu: bool | None = None) -> str | None:
    """The JAX_PLATFORMS that keeps libtpu unloaded on a machine with no TPU ("cpu",
    "cuda,cpu"; `tpu`: whether it may have one, default `tpu_host`); None when the user set
    JAX_PLATFORMS (to a list: "" means "let JAX choose", as unset), the machine may have a
    TPU, libtpu is not installed, or a plugin of an unknown kind is (JAX then chooses, as it
    would without mimjax)."""
    if env.get("JAX_PLATFORMS") or (tpu_host(env) if tpu is None else tpu):
        return None
    installed = installed_platforms(env)
    if installed is None or "tpu" not in installed:
        return None
    return ",".join([p for p in installed if p != "tpu"] + ["cpu"])


def users_platforms(env) -> str | None:
    """JAX_PLATFORMS when the user set it, None when unset or the entry point's own choice."""
    value = env.get("JAX_PLATFORMS")
    return None if value is None or value == env.get(AUTO_MARK) else value


def users_env(env) -> dict:
    """A copy of `env` without the JAX_PLATFORMS the entry point chose (`no_tpu_platforms`)."""
    drop = ("JAX_PLATFORMS", AUTO_MARK) if users_platforms(env) is None else ()
    return {k: v for k, v in env.items() if k not in drop}


def platforms_error(value: str, env) -> str | None:
    """The line for a JAX_PLATFORMS that JAX would fail to start, or None, following JAX's
    own reading (jax/_src/xla_bridge.py `backends`): every platform named must start, but
    CUDA is skipped without an NVIDIA device file (and with nothing left JAX fails on a bare
    AssertionError); "gpu" stands for cuda, rocm and oneapi. A platform whose software is
    installed is left to JAX (`backend_error`)."""
    if not value:  # JAX: the same as unset
        return None
    installed = installed_platforms(env)
    nvidia = nvidia_gpu_visible()
    problem, started = None, False
    for name in value.split(","):  # as JAX splits it: no spaces around the names
        for p in ALIASES.get(name, (name,)):
            if p == "cuda" and not nvidia:
                continue
            started = True
            if p == "cpu" or installed is None or p in installed:
                continue
            problem = INSTALL.get(p, f"JAX's {p} plugin is not installed" if p in KNOWN else f"unknown platform {p!r}")
            if p != name:
                problem = f"{name!r} stands for {', '.join(ALIASES[name])} together, and {problem}"
            break
        if problem:
            break
    if not (problem or started):
        problem = f"no NVIDIA GPU is visible on this machine (JAX looks for {', '.join(NVIDIA_DEVICES)})"
    if problem is None:
        return None
    here = ", ".join(["cpu", *(installed or [])])
    return (f"JAX_PLATFORMS={value}: {problem}; expected a comma-separated list of the platforms installed here "
            f"({here}), or JAX_PLATFORMS unset to let JAX choose")


def backend_error(error: BaseException, env) -> str | None:
    """JAX's "Unable to initialize backend 'x': ..." as one line naming the user's JAX_PLATFORMS;
    None for any other error, or when JAX_PLATFORMS is not the user's."""
    value = users_platforms(env)
    text = str(error).split("\n")[0]
    if value is None or not isinstance(error, RuntimeError) or not text.startswith("Unable to initialize backend"):
        return None
    text = text.split(" (set JAX_PLATFORMS=")[0].rstrip(".")
    return f"JAX_PLATFORMS={value}: {text}; expected platforms this machine can start, or JAX_PLATFORMS unset"


# --- XLA flags -------------------------------------------------------------------------
def xla_libraries(env) -> list[str]:
    """The shared libraries with an XLA that reads XLA_FLAGS: the largest in jaxlib, in libtpu
    and in each `jax_plugins` package (jaxlib/libjax_common.so, libtpu/libtpu.so, ...)."""
    dirs = []
    for name in ("jaxlib", "libtpu", "jax_plugins"):
        spec = importlib.util.find_spec(name)
        for d in (spec.submodule_search_locations or []) if spec else []:
            dirs += [d] if name != "jax_plugins" else [p for p in glob.glob(os.path.join(d, "*")) if os.path.isdir(p)]
    out = [max(libs, key=os.path.getsize) for d in dirs if (libs := glob.glob(os.path.join(d, "*.so*")))]
    tpu = env.get("TPU_LIBRARY_PATH", "")
    return out + ([tpu] if os.path.isfile(tpu) and tpu not in out else [])


def _cache_dir(env) -> str:
    return os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mimjax")


def known_xla_flags(env, cache_dir: str | None = None) -> frozenset | None:
    """Every `xla_...` name in the XLA libraries installed (a superset of their flags), or None
    when there are none or they hold no flag names (then nothing is refused). Cached."""
    try:
        stats = [(p, os.stat(p)) for p in xla_libraries(env)]
    except OSError:  # a library that vanished, a broken link: cannot tell
        return None
    if not stats:
        return None
    libs = [p for p, _ in stats]
    key = hashlib.sha256("\n".join(f"{p}:{s.st_size}:{s.st_mtime_ns}" for p, s in stats).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir or _cache_dir(env), f"xla-flags-{key}.txt")
    try:
        with open(path, "rb") as f:  # a read: a link here is followed as any reader would
            header, *names = f.read().decode().split("\n")
        if header == FLAG_CACHE_VERSION and names:
            return frozenset(names)
    except (OSError, UnicodeDecodeError):
        pass
    names = set()
    try:
        for lib in libs:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                names.update(n.decode() for n in re.findall(rb"xla_[a-z0-9_]+", data))
    except (OSError, ValueError):  # unreadable, or empty (mmap's ValueError): cannot tell
        return None
    if "xla_dump_to" not in names:  # the flags live elsewhere in this build: cannot tell
        return None
    _write_cache(path, "\n".join([FLAG_CACHE_VERSION, *sorted(names)]))
    return frozenset(names)


def _write_cache(path: str, text: str):
    """Best effort: a new file renamed over the old name (never written through a link)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def xla_flags_error(value: str, env, cache_dir: str | None = None) -> str | None:
    """The line for an XLA_FLAGS that XLA would abort on, or None: a flag XLA does not know,
    a word not of the form --NAME[=VALUE], or a file of flags (XLA's reading of a value not
    starting with '-') that cannot be read."""
    text = value.strip()
    if text and not text.startswith("-"):
        try:
            with open(text) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            return (f"XLA_FLAGS={value!r}: XLA reads a value not starting with '-' as a file of flags, and it cannot "
                    f"be read ({getattr(e, 'strerror', None) or e}); expected flags such as --xla_dump_to=DIR")
    words = re.findall(r'(?:[^\s"]|"[^"]*")+', text)  # XLA's words: "double quotes" may hold spaces
    if not words:
        return None
    known = known_xla_flags(env, cache_dir)
    for word in words:
        name = word.split("=", 1)[0]
        if name.startswith("--") and (known is None or name[2:] in known):
            continue
        close = difflib.get_close_matches(name.lstrip("-"), sorted(known or ()), n=1, cutoff=0.8)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        return (f"XLA_FLAGS: unknown XLA flag {word!r}{hint}; expected --NAME=VALUE with a flag of the XLA installed "
                f"(the list: XLA's xla/debug_options_flags.cc)")
    return None


def check(env):
    """Raises UsageError (one line) for a JAX_PLATFORMS or XLA_FLAGS that JAX or XLA would
    fail on; call before JAX starts its backend. Only the user's JAX_PLATFORMS is checked."""
    value = users_platforms(env)
    line = (platforms_error(value, env) if value is not None else None) or \
        xla_flags_error(env.get("XLA_FLAGS", ""), env)
    if line:
        raise UsageError(line)
