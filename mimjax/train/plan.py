"""Pre-flight: a config's train step compiled for an accelerator, and the settings that fit.

`mimjax plan --config RECIPE --target v5e-256` builds the step exactly as `mimjax train` does
(`step.build`, the mesh and sharding rules of mimjax/parallel, the donated state, the dtype
policy and attention kernel resolved for the target's platform) from abstract shapes only,
compiles it for the target's devices (libtpu or the CUDA plugin compile for hardware that is
not there: mimjax/parallel/targets.py) and reads XLA's memory and cost analyses.

`model.remat` and `optimizer.accum_steps` may be "auto": the cheapest setting whose step fits
the device's memory with a 10% margin is taken (no remat -> remat -> remat and accumulation
2, 4, ...), the same way by `mimjax plan` and at the start of `mimjax train` (`resolve_auto`).
The device's memory is the allocator's limit on GPU / TPU, and on the CPU this host's memory
or the process's cgroup limit, whichever is smaller (`device_capacity`).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import pathlib
import re
import resource
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections

from mimjax import flops as flops_lib
from mimjax import parallel
from mimjax.parallel.mesh import mesh_shape
from mimjax.models import precision
from mimjax.train import step as step_lib
from mimjax.train.config import concrete, set_fields, settings

log = logging.getLogger("mimjax")
MARGIN = 0.10  # a setting fits when its step needs at most (1 - MARGIN) of the device's memory
IMAGENET_TRAIN = 1_281_167  # images an epoch when the config does not say (data.num_examples)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# libtpu: "Ran out of memory on HBM, the total memory required for HLO temporaries (24.53G) exceeds ...",
# the size in any unit ("512B", "85.68T", "1.50KiB")
_COMPILER_OOM = re.compile(r"Ran out of memory[^(]*\(([\d.]+\s*[KMGTPE]?(?:i?B)?)\)[^\n]*", re.IGNORECASE)
_SIZE = re.compile(r"([\d.]+)\s*([KMGTPE]?)(?:i?B)?", re.IGNORECASE)
CGROUP_ROOT = "/sys/fs/cgroup"  # where the cgroup trees are mounted (v2 here, v1 in its memory/ folder)
PROC_CGROUP = "/proc/self/cgroup"  # this process's cgroups, one line a hierarchy: "id:controllers:/path"
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_COLLECTIVE = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")  # one HLO line


class DoesNotFit(ValueError):
    """No setting the config allows fits the device's memory (`mimjax plan` exits 3)."""


def parse_bytes(size: str) -> int:
    """A compiler's size in bytes: "24.53G", "85.68T", "512B", "1.50KiB" (powers of 1024)."""
    m = _SIZE.fullmatch(size.strip())
    if m is None:
        raise ValueError(f"not a size: {size!r}")
    return int(float(m[1]) * 1024 ** " KMGTPE".index(m[2].upper() or " "))


def compiler_oom(message: str) -> tuple[int, str] | None:
    """(bytes, the compiler's line) of a compile error where the TPU compiler refused a program
    as too big for the device; None for any other error."""
    m = _COMPILER_OOM.search(message)
    return None if m is None else (parse_bytes(m[1]), m[0])


# --- The "auto" settings ------------------------------------------------------------------
def with_settings(cfg, remat, accum) -> ml_collections.ConfigDict:
    """A copy of `cfg` with these remat / accum_steps (bool / int or "auto"), whatever types its fields held."""
    return set_fields(ml_collections.ConfigDict(cfg.to_dict()), remat, accum)


def candidates(cfg, batch_devices: int) -> list[tuple[bool, int]]:
    """The settings "auto" may take, cheapest first: no remat, remat, then remat with
    accumulation 2, 4, ... while each micro-batch still has an image a device."""
    remat, accum = settings(cfg)
    per_device = cfg.batch_size // batch_devices
    accums = [a for a in (1, 2, 4, 8, 16, 32, 64) if per_device % a == 0] if accum == "auto" else [accum]
    remats = [False, True] if remat == "auto" else [remat]
    out = [(r, a) for a in accums for r in remats]
    if remat == "auto" and accum == "auto":  # accumulation without remat is never cheaper than remat
        out = [(False, 1)] + [(True, a) for a in accums]
    return out


# --- Compiling the step ---------------------------------------------------------------------
@dataclasses.dataclass
class Compiled:
    memory: dict  # bytes per device: arguments, temporaries, outputs, aliased, code, total
    flops_xla: float | None  # XLA's count per device, where the backend gives one
    collectives: dict  # kind -> {"count", "bytes"} in the program text (a loop body counts once)
    compile_s: float
    mesh: dict  # axis -> size
    per_device_batch: int
    executable: object = None  # jax's Compiled (input_shardings, as_text, ...); `plan` drops it once read
    compiler_error: str = ""  # the TPU compiler refused the program as too big (memory: its numbers)
    built: bool = False  # the compiler gave an executable (the memory and FLOPs are its analyses)


def abstract_frozen_teacher(built, img_size: int):
    """The frozen checkpoint teacher's params as shapes (None without one): what
    `Teacher.load_frozen` would read, without reading it."""
    t = built.teacher
    if not (t.in_use and t.source == "checkpoint"):
        return None
    return jax.eval_shape(lambda: t.model.init(jax.random.key(0), jnp.zeros((1, img_size, img_size, 3))))["params"]


def compile_step(cfg, devices, platform: str, max_arguments: float = float("inf")) -> Compiled:
    """The train step of a concrete config (no "auto"), compiled for `devices` of `platform`.
    A step whose arguments alone (parameters, optimizer state, the step's batch, as sharded)
    need more than `max_arguments` bytes a device is not compiled: its memory is the arguments."""
    num_examples = cfg.data.num_examples if cfg.data.num_examples > 0 else IMAGENET_TRAIN
    with precision.target_backend(platform):
        plain = ml_collections.ConfigDict(cfg.to_dict())
        plain.model.init_from = ""  # the start weights do not change the program
        built = step_lib.build(plain, num_examples)
        abstract = jax.eval_shape(functools.partial(built.init_state, jax.random.key(0)))
        par = parallel.JitParallel(cfg.parallelism, abstract, devices=devices)
        step = par.compile_step(lambda axis: step_lib.compile_once(built.make_step(axis)))
        img = cfg.model.img_size
        shaped = lambda tree, shard: jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shard)
        state = shaped(abstract, par.state_sharding)
        batch = {"image": jax.ShapeDtypeStruct((cfg.batch_size, img, img, 3), jnp.float32, sharding=par.batch_sharding),
                 "label": jax.ShapeDtypeStruct((cfg.batch_size,), jnp.int32, sharding=par.batch_sharding)}
        frozen = abstract_frozen_teacher(built, img)
        frozen = None if frozen is None else jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=par.replicated), frozen)
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=par.replicated)
        args = sum(_shard_bytes(x) for x in jax.tree.leaves((state, batch, frozen)))  # as sharded, no padding
        t0 = time.perf_counter()
        compiled, too_big = None, None
        if args <= max_arguments:
            try:
                compiled = step.lower(state, batch, frozen, key).compile()
            except Exception as e:  # noqa: BLE001 - the TPU compiler itself refuses a program that cannot fit
                too_big = compiler_oom(str(e))
                if too_big is None:
                    raise
        seconds = time.perf_counter() - t0
    batch_devices = par.mesh.shape["data"] * par.mesh.shape["fsdp"]
    if compiled is None:  # the arguments; temporaries as the compiler reported them, 0 when not compiled
        temp, error = too_big or (0, "")
        memory = dict(arguments=args, temporaries=temp, outputs=0, aliased=0, code=0, total=args + temp)
        return Compiled(memory, None, {}, seconds, dict(par.mesh.shape), cfg.batch_size // batch_devices, None,
                        compiler_error=error)
    memory = flops_lib.xla_memory(compiled)  # aliased bytes (the donated state's outputs) count once
    return Compiled(memory, flops_lib.xla_flops(compiled), collectives(compiled.as_text()), seconds,
                    dict(par.mesh.shape), cfg.batch_size // batch_devices, compiled, built=True)


def analyse_step(cfg, devices, platform: str, max_arguments: float) -> Compiled:
    """`compile_step`'s analyses of one candidate setting, its program freed and the memory the
    compiler freed given back (`release_freed_memory`) before the next candidate compiles."""
    result = dataclasses.replace(compile_step(cfg, devices, platform, max_arguments=max_arguments), executable=None)
    release_freed_memory()
    return result


def _shard_bytes(x) -> int:
    """Bytes of one device's shard of a ShapeDtypeStruct with a sharding."""
    n = 1
    for d in x.sharding.shard_shape(x.shape):
        n *= d
    return n * x.dtype.itemsize


def collectives(hlo: str) -> dict:
    """kind -> {"count", "bytes"} of the collectives in an optimized HLO module's text."""
    out = {}
    for shape, kind in _COLLECTIVE.findall(hlo):
        nbytes = 0
        for dtype, dims in _SHAPE.findall(shape):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            nbytes += n * _DTYPE_BYTES.get(dtype, 4)
        entry = out.setdefault(kind, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += nbytes
    return out


def fits(memory: dict, capacity: int) -> bool:
    return memory["total"] <= (1 - MARGIN) * capacity


def choose(cfg, measure, capacity: int, batch_devices: int):
    """(config, Compiled, tried) of the cheapest allowed setting that fits, `measure` compiling
    each concrete config; when none fits, the config is None and Compiled the smallest's.
    Remat and accumulation change the temporaries only: once a setting's arguments alone pass
    the allowed memory, no later one fits and the search stops there (`stopped_line`)."""
    tried = []
    for remat, accum in candidates(cfg, batch_devices):
        c = with_settings(cfg, remat, accum)
        result = measure(c)
        tried.append(((remat, accum), result))
        log.info("plan: model.remat=%s optimizer.accum_steps=%d needs %.2f GiB a device of %.2f GiB (%s)",
                 remat, accum, result.memory["total"] / 2 ** 30, capacity / 2 ** 30,
                 "fits" if fits(result.memory, capacity) else "does not fit")
        if fits(result.memory, capacity):
            return c, result, tried
        if stopped_line(tried, capacity):
            break
    return None, min((r for _, r in tried), key=lambda r: r.memory["total"]), tried


def stopped_line(tried, capacity: int) -> str:
    """Why `choose` stopped early (its last setting's arguments alone pass the allowed memory),
    or "" when it did not."""
    (remat, accum), last = tried[-1]
    args, allowed = last.memory["arguments"], (1 - MARGIN) * capacity
    if args <= allowed:
        return ""
    return (f"stopped at model.remat={remat}, optimizer.accum_steps={accum}: the arguments alone (parameters, "
            f"optimizer state, the step's batch) need {_gib(args)} a device of the {_gib(allowed)} allowed "
            f"({1 - MARGIN:.0%} of {_gib(capacity)}), and remat or accumulation does not lower them")


def as_jit(cfg) -> ml_collections.ConfigDict:
    """`cfg`, or for parallelism.mode "pmap" a copy in jit mode with pure data parallelism:
    the same per-device program, which is what is compiled to measure it."""
    if cfg.parallelism.mode == "jit":
        return cfg
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.parallelism.mode, c.parallelism.data, c.parallelism.fsdp, c.parallelism.model = "jit", -1, 1, 1
    return c


def resolve_auto(cfg, devices=None) -> ml_collections.ConfigDict:
    """`cfg` with "auto" remat / accum_steps replaced by the cheapest setting that fits these
    devices (those of this run by default), each compiled here; `cfg` itself when nothing is
    "auto". The choice is logged; a config where nothing fits raises DoesNotFit."""
    if "auto" not in settings(cfg):
        return concrete(cfg)
    devices = jax.devices() if devices is None else devices
    capacity = device_capacity(devices[0])
    probe = as_jit(cfg)
    data, fsdp, _ = mesh_shape(probe.parallelism, len(devices))
    allowed = (1 - MARGIN) * capacity
    measure = lambda c: analyse_step(c, devices, jax.default_backend(), allowed)  # noqa: E731
    chosen, result, tried = choose(probe, measure, capacity, data * fsdp)
    if chosen is None:
        (remat, accum), = [s for s, r in tried if r is result]
        why = stopped_line(tried, capacity) or (
            f"the smallest step (model.remat={remat}, optimizer.accum_steps={accum}) needs "
            f"{_gib(result.memory['total'])} a device, over {1 - MARGIN:.0%} of {_gib(capacity)}")
        raise DoesNotFit(f"model.remat / optimizer.accum_steps = 'auto': no setting fits this device; {why}; "
                         f"raise parallelism.fsdp or lower batch_size")
    remat, accum = chosen.model.remat, chosen.optimizer.accum_steps
    log.info("auto: model.remat=%s, optimizer.accum_steps=%d (the step needs %.2f GiB a device of %.2f GiB)",
             remat, accum, result.memory["total"] / 2 ** 30, capacity / 2 ** 30)
    return with_settings(cfg, remat, accum)


def device_capacity(device, cgroup_root: str | None = None, proc_cgroup: str | None = None) -> int:
    """Bytes a program may use on `device`: the allocator's limit on GPU / TPU; on the CPU
    backend this host's memory or this process's cgroup limit, the smaller (a container's
    limit is what the kernel kills at, not the host's RAM)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory_limit(cgroup_root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP)
    return physical if limit is None else min(physical, limit)


def cgroup_memory_limit(root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP) -> int | None:
    """The smallest memory limit, in bytes, on this process's cgroup and those above it (a
    parent's limit binds its children), under the trees mounted at `root`: cgroup v2's
    `memory.max` ("max": none), v1's `memory/.../memory.limit_in_bytes` (~2^63: none). None
    when no limit is set or none can be read (no cgroups, another OS)."""
    try:
        lines = pathlib.Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    trees = []  # (the hierarchy's folder, this process's cgroup in it, the limit's file)
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # v2: the unified hierarchy
            trees.append((pathlib.Path(root), path, "memory.max"))
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            trees.append((pathlib.Path(root, "memory"), path, "memory.limit_in_bytes"))
    limits = []
    for tree, path, name in trees:
        parts = [p for p in path.split("/") if p]
        # From the process's own cgroup up to the tree's root: in a container without a cgroup
        # namespace the path is the host's, and only the root (the container's cgroup) exists.
        for depth in range(len(parts), -1, -1):
            try:
                text = tree.joinpath(*parts[:depth], name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2 ** 62:  # v1 writes "no limit" as 2^63 rounded down to a page
                limits.append(int(text))
    return min(limits, default=None)


# --- `mimjax plan` ----------------------------------------------------------------------------
def plan(cfg, target, config_name: str = "") -> dict:
    """The pre-flight report of `cfg` on `target` (mimjax.parallel.targets.Target) as one dict;
    `fits` False when no allowed setting fits (then `suggestion` names the cheapest that does,
    or None). Raises ValueError for a target that cannot be compiled for here."""
    from mimjax.models.precision import resolve_dtype, resolve_scan

    devices = target.devices()
    if len(devices) != target.num_devices:
        raise ValueError(f"--target {target.name}: the compiler gave {len(devices)} devices, expected {target.num_devices}")
    note = "" if cfg.parallelism.mode == "jit" else (
        "parallelism.mode='pmap' planned as jit with pure data parallelism (the same per-device program)")
    probe = as_jit(cfg)
    data, fsdp, _ = mesh_shape(probe.parallelism, len(devices))
    capacity = target.capacity_bytes
    compiled = {}  # (remat, accum) -> Compiled: each setting is compiled once

    def measure(c):
        key = (c.model.remat, c.optimizer.accum_steps)
        if key not in compiled:
            compiled[key] = analyse_step(c, devices, target.platform, (1 - MARGIN) * capacity)
        return compiled[key]

    t0 = time.perf_counter()
    chosen, result, tried = choose(probe, measure, capacity, data * fsdp)
    ok, suggestion, stopped = chosen is not None, None, stopped_line(tried, capacity)
    if not ok:  # report the requested (smallest) setting, and find the cheapest one that fits
        (remat, accum), = [s for s, r in tried if r is result]
        chosen = with_settings(probe, remat, accum)
        # The arguments do not depend on the setting: when they alone pass, no setting fits.
        found = None if stopped else choose(with_settings(probe, "auto", "auto"), measure, capacity, data * fsdp)[0]
        suggestion = None if found is None else {"remat": found.model.remat,
                                                 "accum_steps": found.optimizer.accum_steps}
    arch = flops_lib.Arch.from_config(chosen)
    method = flops_lib.method_of(chosen)
    per_image = flops_lib.step_flops(arch, method)["total"]
    if method == "gpa_feature_late":  # the head's blocks run in the last 25% of training only
        per_image = 0.75 * per_image + 0.25 * flops_lib.step_flops(arch, "gpa_feature")["total"]
    analytic = per_image * result.per_device_batch
    scan = resolve_scan(chosen.model.scan, chosen.model.remat, backend=target.platform)
    loops = chosen.optimizer.accum_steps > 1 or scan or method == "gpa_feature_late"
    use_xla = result.flops_xla is not None and not loops
    step_flops = result.flops_xla if use_xla else analytic
    peak = target.chip.peak_bf16
    step_s = {f"{p}%": step_flops / (peak * p / 100) for p in (100, 50)}
    return dict(
        config=config_name, target=target.name, platform=target.platform, device_kind=target.chip.kind,
        devices=len(devices), mesh=result.mesh, batch_size=chosen.batch_size, per_device_batch=result.per_device_batch,
        memory_bytes=result.memory, capacity_bytes=capacity, fits=ok,
        margin=MARGIN, flops_per_step=step_flops,
        flops_source="xla" if use_xla else ("analytic (mimjax/flops.py: XLA counts a loop body once)" if
                                             result.flops_xla is not None else
                                             "analytic (mimjax/flops.py: the step was not compiled)" if
                                             not result.built else
                                             "analytic (mimjax/flops.py: this backend gives no cost analysis)"),
        flops_xla=result.flops_xla, flops_analytic=analytic, peak_flops=peak, step_time_s=step_s,
        img_per_s={k: chosen.batch_size / v for k, v in step_s.items()},
        collectives=result.collectives, loops=loops, compile_s=sum(r.compile_s for r in compiled.values()),
        wall_s=time.perf_counter() - t0, host_peak_bytes=host_peak_bytes(),
        settings=dict(remat=chosen.model.remat, accum_steps=chosen.optimizer.accum_steps, fsdp=fsdp,
                      dtype=str(resolve_dtype(chosen.model.dtype, backend=target.platform)),
                      attention=chosen.model.attention, scan=scan),
        requested=dict(zip(("remat", "accum_steps"), settings(cfg))),
        tried=[dict(remat=r, accum_steps=a, total_bytes=m.memory["total"]) for (r, a), m in compiled.items()],
        suggestion=suggestion, stopped=stopped, compiled=result.built or bool(result.compiler_error),
        note="; ".join(filter(None, [note, stopped, result.compiler_error and
                                     f"the compiler refused the step: {result.compiler_error}"])))


def release_freed_memory() -> None:
    """Give the memory the compiler freed back to the system (glibc's `malloc_trim`): without it
    the next candidate's compile starts on top of the last one's free but held heap."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def host_peak_bytes() -> int:
    """This process's peak resident memory so far, in bytes (the compiler's share of it is most)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def _gib(n) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if abs(n) >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def format_report(r: dict) -> str:
    """The report as the lines `mimjax plan` prints."""
    m, mesh = r["memory_bytes"], r["mesh"]
    s, req = r["settings"], r["requested"]
    mark = lambda k: " (auto)" if req[k] == "auto" else ""  # noqa: E731
    verdict = (f"fits ({1 - m['total'] / r['capacity_bytes']:.0%} free)" if r["fits"] else
               f"DOES NOT FIT (needs {_gib(m['total'])}, {1 - r['margin']:.0%} of the device is {_gib((1 - r['margin']) * r['capacity_bytes'])})")
    coll = ", ".join(f"{k} {v['count']} ({v['bytes'] / 2 ** 20:.1f} MiB)" for k, v in sorted(r["collectives"].items()))
    memory = (f"arguments {_gib(m['arguments'])}, temporaries {_gib(m['temporaries'])}, outputs {_gib(m['outputs'])} "
              f"(aliased {_gib(m['aliased'])}), total {_gib(m['total'])}" if r["compiled"] else
              f"arguments {_gib(m['arguments'])}, the rest not compiled (see the note)")
    lines = [
        f"{r['config'] or 'config'} on {r['target']}: {r['devices']} x {r['device_kind']} ({r['platform']})",
        f"  mesh          data {mesh['data']} x fsdp {mesh['fsdp']} x model {mesh['model']}; batch {r['batch_size']}"
        f" = {r['per_device_batch']} a device",
        f"  settings      model.remat={s['remat']}{mark('remat')}, optimizer.accum_steps={s['accum_steps']}"
        f"{mark('accum_steps')}, dtype {s['dtype']}, attention {s['attention']}, "
        f"{'scanned blocks' if s['scan'] else 'unrolled blocks'}",
        f"  memory        {memory} of {_gib(r['capacity_bytes'])} a device: {verdict}",
        f"  FLOPs/step    {r['flops_per_step'] / 1e12:.3g} TFLOP a device ({r['flops_source']})",
        f"  at 100% MFU   {r['step_time_s']['100%'] * 1e3:.3g} ms a step, {r['img_per_s']['100%']:,.0f} img/s; at 50%: "
        f"{r['step_time_s']['50%'] * 1e3:.3g} ms, {r['img_per_s']['50%']:,.0f} img/s",
        f"  collectives   {coll or ('none' if r['compiled'] else 'not compiled')}"
        f"{' (in the program text: a loop body counted once)' if coll and r.get('loops') else ''}",
        f"  compiled in   {r['compile_s']:.1f} s ({len(r['tried']) or 1} setting(s)), "
        f"{_gib(r['host_peak_bytes'])} of this host's memory at the peak",
    ]
    if r["note"]:
        lines.append(f"  note          {r['note']}")
    return "\n".join(lines)


def shortfall_line(r: dict) -> str:
    """The one line of `mimjax plan`'s exit 3."""
    need, allowed = r["memory_bytes"]["total"], (1 - r["margin"]) * r["capacity_bytes"]
    s, larger = r["suggestion"], "raise parallelism.fsdp, lower batch_size or use a larger target"
    if r["stopped"]:  # the arguments alone pass: no setting helps
        return f"does not fit {r['target']}: {r['stopped']}; {larger}"
    fix = (f"the cheapest setting that fits: --config.model.remat={s['remat']} --config.optimizer.accum_steps="
           f"{s['accum_steps']} (or 'auto' for both)" if s else f"no remat / accumulation setting fits: {larger}")
    return (f"does not fit {r['target']}: the step needs {_gib(need)} a device with model.remat={r['settings']['remat']}"
            f", optimizer.accum_steps={r['settings']['accum_steps']}, {_gib(need - allowed)} over the {_gib(allowed)} "
            f"allowed ({1 - r['margin']:.0%} of {_gib(r['capacity_bytes'])}); {fix}")
