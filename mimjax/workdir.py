"""A run directory (workdir): what every command reads and writes in it.

    W/config.json          the run's full config (pre-training schema, or the classifier's)
    W/checkpoints/<step>/  Orbax checkpoints (mimjax.train.checkpoint)
    W/metrics.jsonl, W/tb/, W/snapshots/, W/curves.png

A directory written by `mimjax import` has the same shape (config.json + checkpoints/0/),
so it serves wherever a pre-training workdir does (teacher.path, finetune, eval, export).

A workdir may be local or on an object store ("gs://bucket/run"): every path goes through
mimjax.paths (etils.epath). On gs:// the run lock is not enforced (see RunLock).
"""
from __future__ import annotations

import json
import logging
import os

import ml_collections

from mimjax import paths

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"


def config_path(workdir: str) -> str:
    return paths.join(workdir, CONFIG)


def checkpoints_dir(workdir: str) -> str:
    return paths.join(workdir, CHECKPOINTS)


def is_workdir(path: str) -> bool:
    """True when `path` holds config.json and checkpoints/ (a run or an imported model)."""
    return paths.isfile(config_path(path)) and paths.isdir(checkpoints_dir(path))


def run_config(workdir: str) -> tuple[dict | None, str]:
    """(the run's config as a JSON dict, where it came from), or (None, "") when there is none.

    config.json first. When it is missing, empty or `{}`, the config of the run's latest
    start is read from the last line of config_history.jsonl (written at every start, next
    to config.json), so a run whose config.json was deleted still knows what it is. A
    config.json that is not JSON is a UsageError naming the file (nothing is guessed)."""
    from mimjax.errors import UsageError

    path = config_path(workdir)
    if paths.isfile(path):
        text = paths.read_text(path)
        if text.strip():
            try:
                saved = json.loads(text)
            except ValueError as e:
                raise UsageError(f"{path} is not valid JSON ({getattr(e, 'msg', e)} at line "
                                 f"{getattr(e, 'lineno', '?')}); restore it (the last line of {HISTORY} holds the "
                                 f"config of the run's latest start) or delete it") from None
            if not isinstance(saved, dict):
                raise UsageError(f"{path} holds a {type(saved).__name__}, not a config (a JSON object); restore "
                                 f"it from the last line of {HISTORY} or delete it")
            if saved:
                return saved, CONFIG
    history = paths.join(workdir, HISTORY)
    if paths.isfile(history):
        for line in reversed(paths.read_text(history).splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(entry, dict) and isinstance(entry.get("config"), dict) and entry["config"]:
                return entry["config"], f"{HISTORY} (the last start's config; {CONFIG} is missing or empty)"
    return None, ""


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The run's config (`run_config`: config.json, else the last start's in
    config_history.jsonl) as a ConfigDict, or None if there is none."""
    saved, _ = run_config(workdir)
    return None if saved is None else ml_collections.ConfigDict(saved)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    paths.makedirs(workdir)
    paths.write_text(config_path(workdir), config.to_json_best_effort(indent=2))


def model_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The `model` section of the run's config (`run_config`), or None if there is none."""
    c = read_config(workdir)
    return None if c is None or "model" not in c else c.model


def load_state(workdir: str) -> dict:
    """The latest checkpoint's train state as saved (nested dicts of arrays)."""
    from mimjax.train import checkpoint  # Orbax: imported only when a checkpoint is read

    return checkpoint.load_state(checkpoints_dir(workdir))


def load_params(workdir: str):
    """`params` of the latest checkpoint, as saved (no target needed)."""
    return load_state(workdir)["params"]


def load_latest_params(workdir: str) -> tuple[int, dict]:
    """(step, params) of the latest checkpoint, as saved: the step the params are from."""
    from mimjax.train import checkpoint

    step, state = checkpoint.load_latest(checkpoints_dir(workdir))
    return step, state["params"]


def is_run_dir(path: str) -> bool:
    """A directory a run (or `mimjax import`) owns: it holds checkpoints/, config_history.jsonl
    or run.lock (an export folder's config.json alone does not make one)."""
    return paths.isdir(path) and any(paths.exists(paths.join(path, n)) for n in (CHECKPOINTS, HISTORY, LOCK))


def _resolved(p: str) -> str:
    return paths.normpath(p) if paths.is_remote(p) else os.path.realpath(p)


def check_output(out: str, flag: str = "--out", *, own_run: bool = False, not_in: str = "") -> None:
    """An output path (export, visualize, eval results, prepare) that would damage a run:
    UsageError naming it when `out` is a run directory (`is_run_dir`; own_run=True: a
    classifier's --out is its own run, allowed) or `not_in` (the run being read), or lies
    inside a run directory's checkpoints/ (which Orbax owns), whether written through a
    linked checkpoints/ (on a bigger disk) or by the real path it links to. Writes nothing."""
    from mimjax.errors import UsageError

    if out is None or not str(out).strip():
        return
    target = _resolved(str(out))
    if not_in and target == _resolved(str(not_in)):
        raise UsageError(f"{flag} {out!r} is the run directory being read ({not_in}); writing there would "
                         f"overwrite its files: choose another path")
    if not own_run and is_run_dir(target):
        raise UsageError(f"{flag} {out!r} is a run directory (it holds {CHECKPOINTS}/, {HISTORY} or {LOCK}); "
                         f"writing there would overwrite the run's files: choose another path")
    def inside(run: str) -> UsageError:
        return UsageError(f"{flag} {out!r} lies inside the run {run}'s {CHECKPOINTS}/, which holds only its "
                          f"checkpoints: choose a path outside it")

    if not_in and (target + "/").startswith(_resolved(checkpoints_dir(str(not_in))) + "/"):
        raise inside(not_in)  # its checkpoints/ may link to another disk
    for path in dict.fromkeys((target, paths.absolute(str(out)))):  # as resolved, and as written (through a link)
        child, parent = path, paths.dirname(path)
        while parent and parent != child:
            if paths.basename(child) == CHECKPOINTS and (paths.isfile(config_path(parent)) or
                                                         paths.isfile(paths.join(parent, HISTORY))):
                raise inside(parent)
            child, parent = parent, paths.dirname(parent)


# --- What a run directory holds: resuming with another config ---------------------------
# A key is SAFE to change between the starts of one run when the checkpoint still means the
# same thing afterwards; every other key must match the run's config.json (a generic rule,
# shared by the pre-training schema, mimjax/train/config.py, and the classifiers',
# mimjax/eval/config.py: a key that a schema lacks simply never occurs). A key ending in
# "." stands for every key under it. The text is the effect, logged on resume.
_SCHEDULE = "the lr schedule (and GPA's masking progress) are recomputed for the new length"
SAFE = {
    "total_steps": _SCHEDULE,
    "total_epochs": _SCHEDULE,
    "optimizer.warmup_epochs": _SCHEDULE,
    "optimizer.warmup_steps": _SCHEDULE,
    "optimizer.nonfinite": "the policy for later non-finite steps changes (halt | skip)",
    "log_every": "only how often metrics are written",
    "checkpoint_every": "only how often checkpoints are written",
    "keep_checkpoints": "only how many checkpoints are kept",
    "snapshot_every": "only how often reconstruction PNGs are written",
    "eval_batch_size": "compute only",
    "data.prefetch": "compute only",
    "data.data_dir": "the data is read from the new path (it must be the same data)",
    "data.manual_dir": "the data is read from the new path (it must be the same data)",
    "data.folder": "the data is read from the new path (it must be the same data)",
    "data.test_folder": "the test data is read from the new path (it must be the same data)",
    "parallelism.": "checkpoints are stored in one global layout and restored into the new one",
    "model.remat": "compute only (the same parameters)",
    "optimizer.accum_steps": "compute only (the same gradient up to float rounding: an image's mask depends on its "
                             "position in the batch, not on the micro-batch)",
    "model.scan": "compute only (the same parameters; dropout draws its randomness differently)",
    "model.attention": "compute only (the same parameters, up to float rounding)",
    "model.dtype": "compute only (parameters stay float32; the numerics change with the compute dtype)",
    "model.init_from": "ignored on resume: the run continues from its checkpoint (init_from applies at a fresh start)",
    "writers": "only where metrics are written",
    "wandb.": "only where metrics are written",
    "eval.": "only the k-NN evaluation during training (the trajectory is the same)",
    "profile.": "only which steps are profiled",
}
HISTORY = "config_history.jsonl"  # one line per start: {"started", "host", "pid", "changes", "config"}
LOCK = "run.lock"
# What a run writes in its directory (mimjax/train/loop.py, pretrain.py, writers.py); the folders'
# own files (snapshots/*.png, tb/ events) are checked one level down.
RUN_FILES = (LOCK, CONFIG, HISTORY, "metrics.jsonl", "curves.png", "wandb_run_id")
RUN_FOLDERS = ("snapshots", "tb")  # folders whose files a run writes (a linked folder is fine: its files are checked)


def safe_effect(key: str) -> str | None:
    """What changing `key` (dotted) on resume does, or None if it must match the run's."""
    for k, effect in SAFE.items():
        if key == k or (k.endswith(".") and key.startswith(k)):
            return effect
    return None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _same(key: str, a, b) -> bool:
    if a == b:
        return True
    if key in ("init", "teacher.path", "model.init_from") and isinstance(a, str) and isinstance(b, str) and a and b:
        return paths.normpath(a) == paths.normpath(b)
    return False


def config_changes(saved: dict, new: dict) -> tuple[list, list]:
    """(mismatches, safe changes) of `new` against `saved` (JSON dicts), each a list of
    (dotted key, new value, saved value); keys missing on either side are not compared."""
    saved, new = _flat(saved), _flat(new)
    bad, safe = [], []
    for key, value in new.items():
        if key in saved and not _same(key, value, saved[key]):
            (safe if safe_effect(key) is not None else bad).append((key, value, saved[key]))
    return bad, safe


def has_checkpoint(workdir: str) -> bool:
    """True when workdir/checkpoints/ holds a finalised step (a directory named by a number)."""
    d = checkpoints_dir(workdir)
    if paths.is_remote(d):  # on an object store Orbax marks a finalised step with this file
        return paths.isdir(d) and any(n.isdigit() and paths.exists(paths.join(d, n, "commit_success.txt"))
                                      for n in paths.listdir(d))
    return paths.isdir(d) and any(n.isdigit() and paths.isdir(paths.join(d, n)) for n in paths.listdir(d))


def _as_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def check_resume(workdir: str, config, flag: str = "--workdir") -> list[str]:
    """Compares `config` with the run's config (`run_config`: config.json, else the last
    line of config_history.jsonl) when `workdir` holds a checkpoint. Raises ConfigError
    naming every key that must match and differs (both values) and the file compared with;
    returns one text per safe change ("config.key=new (was old): effect")."""
    from mimjax.errors import UsageError
    from mimjax.schema import ConfigError

    if not has_checkpoint(workdir):
        return []
    try:
        saved, source = run_config(workdir)
    except UsageError as e:
        raise ConfigError(f"cannot resume {workdir}: {e}") from None
    if saved is None:
        logging.getLogger("mimjax").warning(
            "%s has a checkpoint but neither %s nor %s: this start's config cannot be compared with the run's",
            workdir, CONFIG, HISTORY)
        return []
    if source != CONFIG:
        logging.getLogger("mimjax").warning("%s: comparing with %s", workdir, source)
    bad, safe = config_changes(saved, _as_json(config))
    if bad:
        listed = ", ".join(f"config.{k}={v!r} (the run has {s!r})" for k, v, s in bad)
        where = "" if source == CONFIG else f" (compared with {source.split(' ')[0]})"
        raise ConfigError(f"cannot resume {workdir}: {listed}{where}; start a new {flag} or use the run's values")
    return [f"config.{k}={v!r} (was {s!r}): {safe_effect(k)}" for k, v, s in safe]


def write_config_history(workdir: str, config, changes: list[str]) -> None:
    """Appends this start's config to workdir/config_history.jsonl (config.json is the
    latest). A run from before the history gets its previous config.json as the first line."""
    import datetime
    import socket

    path = paths.join(workdir, HISTORY)
    lines = []
    if not paths.exists(path) and paths.isfile(config_path(workdir)):
        lines.append({"started": None, "note": "config.json from before the history",
                      "config": json.loads(paths.read_text(config_path(workdir)))})
    lines.append({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "host": socket.gethostname(), "pid": os.getpid(), "changes": changes, "config": _as_json(config)})
    paths.append_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def check_writable(workdir: str, flag: str = "--workdir", outputs=()) -> None:
    """Before a run writes anything in the local `workdir`: ConfigError, one line naming the
    path, when a file it would write there (RUN_FILES, then `outputs`, and the files in
    snapshots/ and tb/) is a symbolic link (never written through), or when checkpoints/
    exists but is not a directory this process can write, or holds a step that is a link
    (Orbax would fail to remove it at every save). A folder that is a link to a directory
    (checkpoints/ on a bigger disk) is the user's choice and is written into. Writes nothing."""
    from mimjax.errors import UsageError
    from mimjax.schema import ConfigError

    if paths.is_remote(workdir) or not os.path.isdir(workdir):
        return
    names = [*RUN_FILES, *outputs]
    for folder in RUN_FOLDERS:
        if os.path.isdir(os.path.join(workdir, folder)):
            names += [os.path.join(folder, n) for n in sorted(os.listdir(os.path.join(workdir, folder)))]
    try:
        for name in names:
            paths.refuse_link(os.path.join(workdir, name))
    except UsageError as e:
        raise ConfigError(str(e)) from None
    ckpts = checkpoints_dir(workdir)
    if os.path.lexists(ckpts) and not os.path.isdir(ckpts):
        raise ConfigError(f"{ckpts} is not a directory: expected the run's checkpoint folder (nothing was written); "
                          f"move it away or choose another {flag}")
    if os.path.isdir(ckpts) and not os.access(ckpts, os.W_OK | os.X_OK):
        raise ConfigError(f"{ckpts} cannot be written by this process (nothing was written): expected a writable "
                          f"checkpoint folder; fix its permissions or choose another {flag}")
    for name in sorted(os.listdir(ckpts)) if os.path.isdir(ckpts) else ():
        step = os.path.join(ckpts, name)
        if (name.isdigit() or ".orbax-checkpoint-tmp" in name) and os.path.islink(step):
            raise ConfigError(f"{step} is a symbolic link (to {os.readlink(step)!r}): the steps in {ckpts} are "
                              f"folders that Orbax writes and removes, never through a link (nothing was written); "
                              f"move that step's folder into {ckpts} or remove the link")


# --- One writer: the run lock -------------------------------------------------------------
class RunLock:
    """workdir/run.lock, held (process 0) for the whole run: `fcntl.flock` on the open file,
    with {"pid", "host", "started"} inside for the messages.

    flock rather than an O_EXCL file + pid check: the kernel releases it when the holder
    dies, even by kill -9, so a stale lock never blocks a restart, pid reuse cannot fake a
    live holder, and a pid on another host (which cannot be checked) is never needed. The
    file left behind by a killed run is taken over with a warning naming its pid and host;
    one this process may not write (another user's run) is a ConfigError naming its owner,
    the pid inside and how to remove it (`_unwritable_lock`). Limitation: flock is only as
    good as the filesystem's locking: local disks and NFSv4 (Linux emulates flock with POSIX
    locks there) honour it; some network or FUSE filesystems (gcsfuse, older NFS, some SMB
    mounts) accept it without locking across hosts, and there two hosts could both run in
    one directory.

    Object stores (gs://...): there is no flock, and a lock object could not be told from
    one left by a killed run (kill -9, a preempted VM), so none is taken: `acquire` logs a
    warning that one writer is not enforced and returns a lock that holds nothing. Two runs
    started in one gs:// workdir would both write to it; keep one run per directory."""

    def __init__(self, path: str, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, workdir: str) -> "RunLock":
        """Takes the lock or raises ConfigError naming the holder's pid and host; writes
        nothing when refused. OSError: the workdir cannot be created or written."""
        import datetime
        import fcntl
        import logging
        import socket

        from mimjax.errors import UsageError
        from mimjax.schema import ConfigError

        if paths.is_remote(workdir):
            logging.getLogger("mimjax").warning(
                "%s is on an object store: no run lock there (no flock), so one writer per directory "
                "is not enforced; do not start a second run in it", workdir)
            return cls(paths.join(workdir, LOCK), None)
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOCK)
        while True:
            try:  # never through a link planted at run.lock: its target would be overwritten
                fd = paths.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
            except UsageError as e:
                raise ConfigError(str(e)) from None
            except PermissionError:  # another user's lock (else: the workdir cannot be written)
                if (why := _unwritable_lock(workdir, path)) is None:
                    raise
                raise why from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = _read_lock(fd)
                os.close(fd)
                raise _in_use(workdir, path, held) from None
            try:  # the holder may have removed the file between our open and flock: lock the new one
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_lock(fd)
        if old:
            mine = old.get("host") == socket.gethostname()
            logging.getLogger("mimjax").warning(
                "taking over the stale lock %s of pid %s on host %s (%s)", path, old.get("pid", "?"),
                old.get("host", "?"), "that process is gone" if mine else "another host; its lock is not held")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        """Removes the file while still holding it (only if it is still this lock's file), then
        unlocks (closing the file)."""
        if self.fd is None:
            return
        try:
            if os.lstat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _in_use(workdir: str, path: str, held: dict) -> Exception:
    """The ConfigError of a lock a live run holds: its pid, host and start (`held`)."""
    from mimjax.schema import ConfigError

    return ConfigError(f"{workdir} is in use by pid {held.get('pid', '?')} on host {held.get('host', '?')}"
                       f"{' since ' + held['started'] if held.get('started') else ''} (lock {path}); wait for that "
                       f"run to end or stop it")


def _unwritable_lock(workdir: str, path: str) -> Exception | None:
    """Why a run.lock that exists but that this process may not open for writing (another
    user's) stops the start: its holder when a run holds it, else whose stale lock it is,
    the pid inside, and how to remove it. None when there is no such file."""
    import fcntl
    import pwd

    from mimjax.schema import ConfigError

    def name(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid {uid}"

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    owner = f"user {name(st.st_uid)} (uid {st.st_uid})"
    remove = f"(rm {path}, as {name(st.st_uid)}{' or root' if st.st_uid else ''})"
    this = f"this process (user {name(os.geteuid())}, uid {os.geteuid()})"
    try:
        fd = paths.open_nofollow(path, os.O_RDONLY)
    except OSError:  # not even readable: neither its pid nor whether a run holds it can be known
        return ConfigError(f"{path} belongs to {owner}, and {this} may neither read nor write it; if no run of "
                           f"that user is using {workdir}, remove it {remove} and start again")
    try:
        info = _read_lock(fd)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: fails while a run holds the lock
    except BlockingIOError:
        return _in_use(workdir, path, info)
    finally:
        os.close(fd)
    return ConfigError(f"{path} is a stale lock (pid {info.get('pid', '?')} on host {info.get('host', '?')}; no run "
                       f"holds it) that belongs to {owner}, and {this} may not write it; remove it {remove} and "
                       f"start again")


def _read_lock(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        info = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}
    return info if isinstance(info, dict) else {"pid": "?", "host": "?"}


def require_path(path, flag: str) -> None:
    """An empty or whitespace-only directory flag is a ConfigError (not the current directory);
    so is a remote one (gs://...) whose bucket cannot be reached (mimjax.paths.check_reachable)."""
    from mimjax.schema import ConfigError

    if path is not None and not str(path).strip():
        raise ConfigError(f"{flag}={path!r}: expected a directory path, not an empty one")
    if path is not None:
        paths.check_reachable(path, flag)
