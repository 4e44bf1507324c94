"""`mimjax plan` and the "auto" settings under bad input and tight memory (issue 36, the
third round of faults): the compiler's sizes in every unit, a batch whose arguments alone
pass the device stops at once, target counts out of range get one line, and on the CPU
"auto" measures against the cgroup's memory limit, not the host's RAM."""
import json
import os
import time

import jax
import pytest

from mimjax.parallel import targets
from mimjax.train import config as config_lib
from mimjax.train import plan

needs_libtpu = pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None, reason="libtpu (requirements-dev.txt) not installed")
PLAN = ["plan", "--config", "configs/mae.py:vit_tiny_patch16,runlocal", "--target", "v5e-4"]
GiB = 2 ** 30


# --- the compiler's sizes --------------------------------------------------------------------
@pytest.mark.parametrize("size,nbytes", [
    ("512B", 512), ("7", 7), ("1.5K", 1536), ("1.50KiB", 1536), ("3M", 3 * 1048576), ("0.5G", 536870912),
    ("2T", 2199023255552), ("3P", 3377699720527872), ("1E", 1152921504606846976), ("2 GiB", 2147483648)])
def test_compiler_sizes_are_read_in_every_unit(size, nbytes):
    assert plan.parse_bytes(size) == nbytes


def test_a_compiler_refusal_in_terabytes_is_read_and_other_errors_are_not():
    line = ("Ran out of memory on HBM, the total memory required for HLO temporaries (85.68T) exceeds available "
            "HBM (15.75G).")  # libtpu's words for a batch of 2^30 on a v5e
    nbytes, said = plan.compiler_oom(f"RESOURCE_EXHAUSTED: {line}\nmore")
    assert said == line and nbytes == pytest.approx(85.68 * 1024 ** 4, rel=1e-12)
    assert plan.compiler_oom("INTERNAL: something else (24.53G)") is None
    with pytest.raises(ValueError, match="'12X'"):
        plan.parse_bytes("12X")


# --- a batch whose arguments alone pass the device -------------------------------------------
def _fake_measure(arguments, temporaries):
    """A `measure` that compiles nothing: every setting needs these bytes, and records its calls."""
    calls = []

    def measure(c):
        calls.append((c.model.remat, c.optimizer.accum_steps))
        memory = dict(arguments=arguments, temporaries=temporaries, total=arguments + temporaries)
        return plan.Compiled(memory, None, {}, 0.0, {}, 1)
    return measure, calls


def test_the_search_stops_at_the_first_setting_whose_arguments_pass(tiny_config):
    cfg = config_lib.set_fields(tiny_config(batch_size=64), "auto", "auto")  # 8 candidates on 1 device
    measure, calls = _fake_measure(arguments=95 * GiB, temporaries=10 * GiB)
    chosen, _, tried = plan.choose(cfg, measure, capacity=100 * GiB, batch_devices=1)  # 90 GiB allowed
    assert chosen is None and calls == [(False, 1)]
    assert plan.stopped_line(tried, 100 * GiB) == (
        "stopped at model.remat=False, optimizer.accum_steps=1: the arguments alone (parameters, optimizer state, "
        "the step's batch) need 95.00 GiB a device of the 90.00 GiB allowed (90% of 100.00 GiB), and remat or "
        "accumulation does not lower them")
    measure, calls = _fake_measure(arguments=80 * GiB, temporaries=20 * GiB)  # room left: every setting is tried
    chosen, _, tried = plan.choose(cfg, measure, capacity=100 * GiB, batch_devices=1)
    assert chosen is None and len(calls) == len(plan.candidates(cfg, 1)) == 8
    assert plan.stopped_line(tried, 100 * GiB) == ""


@needs_libtpu
@pytest.mark.parametrize("batch,img,needs", [(2 ** 30, 32, "3073.00 GiB"), (2 ** 21, 64, "24.00 GiB")])
def test_plan_of_a_batch_that_cannot_fit_stops_in_seconds_with_one_line(run_cli, batch, img, needs):
    """2^30 images ended in a traceback ("42.84T" unread); 2^21 took 12 minutes trying every
    remat / accumulation setting, though its images alone pass the v5e's memory."""
    t0 = time.perf_counter()
    p = run_cli(*PLAN, f"--config.batch_size={batch}", f"--config.model.img_size={img}", "--json", timeout=300)
    assert time.perf_counter() - t0 < 60 and p.returncode == 3, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"mimjax plan: does not fit v5e-4: stopped at model.remat=False, optimizer.accum_steps=1: the arguments alone "
        f"(parameters, optimizer state, the step's batch) need {needs} a device of the 14.40 GiB allowed (90% of "
        f"16.00 GiB), and remat or accumulation does not lower them; raise parallelism.fsdp, lower batch_size or use "
        f"a larger target")
    r = json.loads(p.stdout)
    # Nothing compiled: the arguments are a device's share of the images (float32, 4 devices)
    # and labels (int32), and the tiny model's state.
    batch_bytes = batch // 4 * (img * img * 3 * 4 + 4)
    assert not r["fits"] and len(r["tried"]) == 1 and r["suggestion"] is None and r["stopped"] in r["note"]
    assert batch_bytes < r["memory_bytes"]["arguments"] < batch_bytes + 64 * 2 ** 20


# --- target counts ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,line", [
    ("0xh100x8", "0 hosts; expected 1 to 8,192 hosts of 8 GPUs (65,536 devices in all at most), e.g. 4xh100x8"),
    ("999999xh100x8", "999999 hosts; expected 1 to 8,192 hosts of 8 GPUs (65,536 devices in all at most), "
                      "e.g. 4xh100x8"),
    ("0xv5e-16", "0 slices; expected 1 to 4,096 slices of 16 chips (65,536 devices in all at most), e.g. 2xv5e-16"),
    ("h100x0", "0 GPUs a host; a GPU host has 1 to 8 GPUs (e.g. h100x8; 4xh100x8 for 4 hosts)"),
    ("v5e-1048576", "1048576 chips; a v5e slice has a power of two from 1 to 256 chips (e.g. v5e-8)"),
    ("v4-16384", "16384 TensorCores; a v4 slice has a power of two from 8 to 8192 TensorCores (e.g. v4-16)")])
def test_target_counts_out_of_range_name_the_value_and_the_range(name, line):
    with pytest.raises(ValueError) as e:
        targets.parse(name)
    assert str(e.value) == f"--target {name!r}: {line}"


def test_the_largest_targets_are_accepted():
    assert [targets.parse(n).num_devices for n in ("8192xh100x8", "256xv5e-256", "v4-8192")] == [65536, 65536, 4096]


def test_a_target_of_999999_hosts_is_one_line_before_the_config_is_checked(run_cli):
    p = run_cli(*PLAN[:3], "--target", "999999xh100x8", timeout=300)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "mimjax plan: --target '999999xh100x8': 999999 hosts; expected 1 to 8,192 hosts of 8 GPUs (65,536 devices in "
        "all at most), e.g. 4xh100x8"]


# --- the CPU's memory: the cgroup limit ------------------------------------------------------
def _tree(tmp_path, membership: str, files: dict):
    """A fake /sys/fs/cgroup (files: path under it -> text) and /proc/self/cgroup (membership)."""
    for rel, text in files.items():
        (tmp_path / "cg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / rel).write_text(text + "\n")
    (tmp_path / "self_cgroup").write_text(membership)
    return str(tmp_path / "cg"), str(tmp_path / "self_cgroup")


@pytest.mark.parametrize("membership,files,limit", [
    # v2: a parent's limit binds its children; the smallest on the way up counts
    ("0::/user.slice/job\n", {"user.slice/job/memory.max": "max", "user.slice/memory.max": "1073741824"}, GiB),
    ("0::/user.slice/job\n", {"user.slice/job/memory.max": "536870912", "user.slice/memory.max": "1073741824"},
     GiB // 2),
    ("0::/user.slice/job\n", {"user.slice/job/memory.max": "max", "user.slice/memory.max": "max"}, None),
    # v2 in a container without its own cgroup namespace: the host's path, only the root is mounted
    ("0::/docker/3f2a\n", {"memory.max": "3221225472"}, 3 * GiB),
    # v1 (beside an empty v2 line, a hybrid host): the memory controller's own tree
    ("4:memory:/process_api/ab12\n1:cpu,cpuacct:/\n0::/\n",
     {"memory/process_api/ab12/memory.limit_in_bytes": "2147483648"}, 2 * GiB),
    ("4:memory:/process_api/ab12\n", {"memory/process_api/ab12/memory.limit_in_bytes": "9223372036854771712",
                                      "memory/memory.limit_in_bytes": "9223372036854771712"}, None),  # v1's "none"
    # missing and unreadable files
    ("0::/job\n", {}, None), ("4:memory:/job\n", {"memory/job/memory.limit_in_bytes": "garbage"}, None),
    ("", {"memory.max": "1073741824"}, None)])
def test_the_cgroup_limit_is_read_from_v1_and_v2_trees(tmp_path, membership, files, limit):
    assert plan.cgroup_memory_limit(*_tree(tmp_path, membership, files)) == limit


def test_no_cgroup_file_at_all_is_no_limit(tmp_path):
    assert plan.cgroup_memory_limit(str(tmp_path / "none"), str(tmp_path / "no_self_cgroup")) is None


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_cpu_capacity_is_the_smaller_of_ram_and_the_cgroup_and_an_accelerator_keeps_its_own(tmp_path):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tight = _tree(tmp_path / "tight", "0::/job\n", {"job/memory.max": str(64 * 2 ** 20)})
    loose = _tree(tmp_path / "loose", "0::/job\n", {"job/memory.max": str(physical * 4)})
    cpu = _Device(None)  # JAX's CPU device gives no memory_stats
    assert plan.device_capacity(cpu, *tight) == 64 * 2 ** 20
    assert plan.device_capacity(cpu, *loose) == physical
    assert plan.device_capacity(_Device({"bytes_limit": 17 * GiB}), *tight) == 17 * GiB  # a GPU / TPU's allocator


def test_auto_under_a_cgroup_limit_stops_before_compiling(tmp_path, monkeypatch, tiny_config):
    """The kernel kills at the cgroup's limit: "auto" measures against it. 8192 images of
    32 px (96 MiB of float32, more with the labels and the tiny model's state) pass 90% of a
    64 MiB container, so no setting fits, said at once."""
    root, self_cgroup = _tree(tmp_path, "0::/job\n", {"job/memory.max": str(64 * 2 ** 20)})
    monkeypatch.setattr(plan, "CGROUP_ROOT", root)
    monkeypatch.setattr(plan, "PROC_CGROUP", self_cgroup)
    cfg = config_lib.set_fields(tiny_config(batch_size=8192), "auto", "auto")
    t0 = time.perf_counter()
    stopped = r"stopped at model.remat=False, optimizer.accum_steps=1: the arguments alone .* need 9[6-9]\.\d MiB"
    with pytest.raises(plan.DoesNotFit, match=stopped + r" a device of the 57\.6 MiB allowed \(90% of 64\.0 MiB\)"):
        plan.resolve_auto(cfg, devices=jax.devices("cpu")[:1])
    assert time.perf_counter() - t0 < 30
