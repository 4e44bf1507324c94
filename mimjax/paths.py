"""Paths that every command reads and writes: local ones and object stores (gs://...) alike.

One layer, etils.epath (Orbax's own): a local path stays a plain string handled by `os`
(exactly what mimjax did before), a remote one ("gs://bucket/run"; any "scheme://" but
file://) goes through epath, whose gs:// backend without TensorFlow is fsspec's gcsfs.
Orbax checkpoints reach gs:// through tensorstore, TensorBoard events through
google-cloud-storage; both take the same "gs://..." strings.

Object stores differ from a disk in ways the callers account for:
- no directories: a "directory" exists when an object lies under it; `makedirs` is a no-op;
- no append, no atomic rename: `append_text` rewrites the object, `move` copies and deletes;
- no flock (mimjax.workdir.RunLock skips it on gs://, with a warning);
- no disk_usage (checkpoint's free-space check is local only).

Locally, a file mimjax writes is never written through a symbolic link (`refuse_link`,
`open_nofollow`): a link planted where a run, an evaluation or an export writes is a
UsageError naming it, and its target is left as it was.

Listings are not cached (gcsfs would otherwise keep a directory listing it made once,
and miss the checkpoints that tensorstore or another process wrote since).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil

from etils import epath

from mimjax.errors import UsageError

try:  # gcsfs: list the store every time (see above); set before any gs:// filesystem exists
    import fsspec.config

    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
except ImportError:  # pragma: no cover - fsspec comes with etils[epath]
    pass


def is_remote(path) -> bool:
    """True for "scheme://..." paths (gs://, s3://, ...), False for local ones and file://."""
    p = os.fspath(path) if not isinstance(path, str) else path
    return "://" in p and not p.startswith("file://")


def path(p) -> epath.Path:
    """`p` as an etils.epath.Path (local or remote)."""
    return epath.Path(p)


def absolute(p: str) -> str:
    """os.path.abspath for local paths; remote ones unchanged (abspath would turn
    "gs://b/run" into "<cwd>/gs:/b/run")."""
    p = os.fspath(p)
    return p.rstrip("/") if is_remote(p) else os.path.abspath(p)


def join(p: str, *parts: str) -> str:
    """os.path.join that keeps "gs://" (the parts are relative names)."""
    p = os.fspath(p)
    if not is_remote(p):
        return os.path.join(p, *parts)
    return "/".join([p.rstrip("/"), *(str(x).strip("/") for x in parts)])


def dirname(p: str) -> str:
    p = os.fspath(p)
    return p.rstrip("/").rsplit("/", 1)[0] if is_remote(p) else os.path.dirname(p)


def basename(p: str) -> str:
    p = os.fspath(p)
    return p.rstrip("/").rsplit("/", 1)[-1] if is_remote(p) else os.path.basename(p)


def normpath(p: str) -> str:
    p = os.fspath(p)
    return p.rstrip("/") if is_remote(p) else os.path.normpath(p)


def exists(p) -> bool:
    return epath.Path(p).exists() if is_remote(p) else os.path.exists(p)


def isfile(p) -> bool:
    return epath.Path(p).is_file() if is_remote(p) else os.path.isfile(p)


def isdir(p) -> bool:
    return epath.Path(p).is_dir() if is_remote(p) else os.path.isdir(p)


def makedirs(p) -> None:
    """os.makedirs(exist_ok=True); nothing on an object store (no directories there)."""
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def listdir(p) -> list[str]:
    """Names in directory `p` (os.listdir); an absent remote "directory" raises FileNotFoundError."""
    if not is_remote(p):
        return os.listdir(p)
    d = epath.Path(p)
    if not d.is_dir():
        raise FileNotFoundError(f"no such directory: {p}")
    return [c.name for c in d.iterdir()]


def open_file(p, mode: str = "r"):
    """open() for both (remote: write modes create the object when the file is closed)."""
    return epath.Path(p).open(mode) if is_remote(p) else open(p, mode)  # noqa: SIM115


def read_text(p) -> str:
    with open_file(p) as f:
        return f.read()


def write_text(p, text: str) -> None:
    write_bytes(p, text.encode())


def read_bytes(p) -> bytes:
    with open_file(p, "rb") as f:
        return f.read()


def write_bytes(p, data: bytes) -> None:
    """The whole file at once: a reader sees the old content or the new, never a part
    (local: a temporary file renamed over `p`; an object appears when its upload ends).
    A symbolic link at `p` is refused (`refuse_link`), not replaced nor written through."""
    if is_remote(p):
        with open_file(p, "wb") as f:
            f.write(data)
        return
    refuse_link(p)
    tmp = f"{p}.tmp.{os.getpid()}"
    try:
        if os.path.lexists(tmp):  # left by a killed process of the same pid
            os.remove(tmp)
        with os.fdopen(open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
            f.write(data)
        os.replace(tmp, p)  # (a link planted since the check is replaced, its target untouched)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def append_text(p, text: str) -> None:
    """Appends `text` (locally never through a symbolic link: `open_nofollow`); on an object
    store (no append) the object is read and rewritten."""
    if not is_remote(p):
        with open_append(p) as f:
            f.write(text)
        return
    old = read_text(p) if exists(p) else ""
    write_text(p, old + text)


def open_append(p):
    """The local text file `p` opened for appending (created if missing), never through a
    symbolic link (`open_nofollow`)."""
    return os.fdopen(open_nofollow(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")


def _link_error(p) -> UsageError:
    return UsageError(f"{p} is a symbolic link (to {os.readlink(p)!r}); mimjax never writes through a link: "
                      f"remove it or choose another directory")


def refuse_link(p) -> None:
    """UsageError naming `p` and its target when the local path `p` is a symbolic link (a
    file or folder mimjax is about to write); nothing for other paths and remote ones."""
    if not is_remote(p) and os.path.islink(p):
        raise _link_error(p)


def open_nofollow(p, flags: int, mode: int = 0o666) -> int:
    """os.open(p, flags) never through a symbolic link at `p` (O_NOFOLLOW): a link is a
    UsageError naming it (`refuse_link`), even one planted after a check."""
    try:
        return os.open(p, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EEXIST) and os.path.islink(p):
            raise _link_error(p) from None
        raise


def move(src, dst) -> None:
    """os.replace (atomic, local); remote: copy then delete (not atomic), directories too."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    import fsspec

    fs, _ = fsspec.core.url_to_fs(str(src))
    fs.copy(str(src), str(dst), recursive=True)  # (gcsfs's mv tries a moveTo API first; emulators lack it)
    fs.rm(str(src), recursive=True)


def rmtree(p) -> None:
    """shutil.rmtree(ignore_errors=True) for both."""
    if not is_remote(p):
        shutil.rmtree(p, ignore_errors=True)
        return
    try:
        epath.Path(p).rmtree()
    except (OSError, FileNotFoundError):
        pass


def glob(directory, pattern: str) -> list[str]:
    """Paths in `directory` whose names match `pattern` (fnmatch, one level)."""
    import fnmatch

    try:
        names = listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [join(directory, n) for n in sorted(names) if fnmatch.fnmatch(n, pattern)]


def check_reachable(p, what: str) -> None:
    """A remote `p` whose bucket cannot be reached (no credentials, no such bucket, no
    network) is a ConfigError naming `what` and `p`, raised before any work starts.
    Local paths: nothing to check here."""
    if not is_remote(p):
        return
    from mimjax.schema import ConfigError

    p = os.fspath(p)
    scheme, rest = p.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"{what} {p!r}: no bucket in the path (expected {scheme}://BUCKET/...)")
    if scheme == "gs":  # a quick connect first: gcsfs retries an unreachable host for ~1.5 min
        _connect(os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com", what, p)
    quiet = logging.getLogger("gcsfs")
    level, quiet.level = quiet.level, logging.CRITICAL  # its retries log whole tracebacks
    try:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(p)
        found = fs.exists(f"{scheme}://{bucket}")
    except ImportError as e:
        raise ConfigError(f"{what} {p!r}: {scheme}:// needs a package that is not installed ({e}); "
                          f"pip install gcsfs") from None
    except Exception as e:  # credentials, permissions, network: one line naming the path
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise ConfigError(f"{what} {p!r}: cannot reach bucket {scheme}://{bucket} ({msg})") from None
    finally:
        quiet.level = level
    if not found:
        raise ConfigError(f"{what} {p!r}: bucket {scheme}://{bucket} does not exist or cannot be read "
                          f"with these credentials")


def _connect(url: str, what: str, p: str, timeout: float = 10.0) -> None:
    """ConfigError naming `p` when the store's endpoint `url` takes no TCP connection."""
    import socket
    import urllib.parse

    from mimjax.schema import ConfigError

    u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"{what} {p!r}: cannot connect to the object store at {u.hostname}:{port} ({e})") from None


# --- A full disk ------------------------------------------------------------------------
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Orbax/TensorStore report write failures as ValueError('RESOURCE_EXHAUSTED: ... No space
# left on device'), so the text is checked as well as OSError.errno.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


def disk_full_reason(e: BaseException | None) -> str | None:
    """Why e (or an exception it was raised from) is a full disk / quota / file-size limit,
    e.g. "No space left on device"; None when it is something else."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return os.strerror(e.errno)
        for text in _DISK_FULL_TEXT:
            if text in str(e):
                return text
        e = e.__cause__ or e.__context__
    return None


def is_disk_full(e: BaseException | None) -> bool:
    return disk_full_reason(e) is not None
