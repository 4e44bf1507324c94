"""`mimjax plan` and the "auto" settings: the train step compiled for a TPU slice through libtpu
on this CPU machine (tiny ViTs: seconds to a minute each), the accumulation that saves memory
there, the settings `auto` picks, and the target names."""
import json
import os
import platform
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from mimjax.parallel import mesh as mesh_lib
from mimjax.parallel import targets
from mimjax.train import config as config_lib
from mimjax.train import plan
from mimjax.train import step as step_lib

needs_libtpu = pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None, reason="libtpu (requirements-dev.txt) not installed")


@pytest.fixture(scope="session")
def tiny_mae(tiny_config):
    """tiny_mae(batch=16, img=32, remat=False, accum=1, **model): the MAE recipe shrunk (ViT
    width 64, 2 blocks, one decoder block) on synthetic data."""
    def make(batch=16, img=32, remat=False, accum=1, **model):
        c = tiny_config(batch_size=batch, model=dict(img_size=img, **model), data=dict(source="synthetic"))
        return config_lib.set_fields(c, remat, accum)
    return make


@pytest.fixture(scope="module")
def v5e4():
    os.environ.update(targets.compile_only_env(targets.parse("v5e-4"), os.environ) | {"JAX_PLATFORMS": "cpu"})
    return targets.parse("v5e-4").devices()


# --- target names (no compiler) --------------------------------------------------------------
@pytest.mark.parametrize("name,chips,groups,topology", [
    ("v4-32", 16, 1, "v4:2x2x4"), ("v5e-16", 16, 1, "v5e:4x4"), ("v5e-256", 256, 1, "v5e:16x16"),
    ("v5p-128", 64, 1, "v5p:4x4x4"), ("v6e-64", 64, 1, "v6e:8x8"), ("v5e-8", 8, 1, "v5e:2x4"),
    ("2xv5e-256", 256, 2, "v5e:16x16"), ("h100x8", 8, 1, "1x1x8"), ("4xh200x8", 8, 4, "1x4x8")])
def test_target_names_give_chips_and_topology(name, chips, groups, topology):
    t = targets.parse(name)
    assert (t.chips, t.groups, t.topology(), t.num_devices) == (chips, groups, topology, chips * groups)


@needs_libtpu
@pytest.mark.parametrize("name", ["v5e-1", "v5e-2"])
def test_slices_smaller_than_a_host_have_devices(name, v5e4):  # libtpu's default host (2x2) refused them
    assert len(targets.parse(name).devices()) == targets.parse(name).num_devices


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux's /proc")
def test_the_host_peak_is_this_process_high_water_mark():
    """`plan` reports the planning host's peak memory (the compiler's, mostly): getrusage's, as
    the kernel's VmHWM gives it."""
    hwm = lambda: int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]) * 1024  # noqa: E731
    assert abs(plan.host_peak_bytes() - hwm()) <= 2 ** 20  # the two count pages a little differently


@pytest.mark.parametrize("name,says", [("v5e-12", "power of two"), ("v4-4", "from 8 to 8192"), ("h100x16", "1 to 8"),
                                       ("tpu", "e.g. v4-32"), ("v7-8", "e.g. v4-32")])
def test_bad_target_names_say_what_is_expected(name, says):
    with pytest.raises(ValueError, match=says):
        targets.parse(name)


def test_gpu_capacity_is_the_allocator_share(monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    assert targets.parse("h100x8").capacity_bytes == targets.CHIPS["h100"].memory_bytes // 2
    assert targets.parse("v5e-4").capacity_bytes == 16 * 2 ** 30


def test_collectives_are_counted_with_their_bytes():
    hlo = """
  %all-reduce.1 = f32[]{:T(128)} all-reduce(%x), channel_id=2, to_apply=%add
  %all-reduce.78 = (f32[4,8]{1,0:T(4,128)S(1)}, bf16[2], /*index=2*/f32[128,32]{0,1:T(8,128)}) all-reduce(%a, %b, %c)
  %ag = bf16[64,1024]{1,0} all-gather-start(%p), dimensions={0}
  %rs = f32[16]{0} reduce-scatter(%q), dimensions={0}
  %not = f32[8] add(%all-reduce.1, %y)
"""
    assert plan.collectives(hlo) == {"all-reduce": {"count": 2, "bytes": 4 + 4 * 32 + 2 * 2 + 4 * 128 * 32},
                                     "all-gather": {"count": 1, "bytes": 2 * 64 * 1024},
                                     "reduce-scatter": {"count": 1, "bytes": 64}}


# --- the "auto" settings (no compiler) -------------------------------------------------------
def test_auto_takes_the_cheapest_setting_that_fits(tiny_mae):
    need = {(False, 1): 100, (True, 1): 60, (True, 2): 40, (True, 4): 30}  # bytes a setting needs
    measure = lambda c: plan.Compiled({"total": need[(c.model.remat, c.optimizer.accum_steps)], "arguments": 10},
                                      None, {}, 0.0, {}, 1)  # noqa: E731
    cfg = tiny_mae(batch=16, remat="auto", accum="auto")
    for capacity, want in ((200, (False, 1)), (80, (True, 1)), (50, (True, 2)), (34, (True, 4))):
        chosen, _, _ = plan.choose(cfg, measure, capacity, batch_devices=4)
        assert (chosen.model.remat, chosen.optimizer.accum_steps) == want, capacity
    chosen, smallest, tried = plan.choose(cfg, measure, 20, batch_devices=4)  # nothing fits
    assert chosen is None and smallest.memory["total"] == 30 and len(tried) == 4  # 16 / 4 devices: accum <= 4
    fixed = config_lib.set_fields(tiny_mae(), False, "auto")  # remat stays as asked
    assert plan.candidates(fixed, 4) == [(False, 1), (False, 2), (False, 4)]


@pytest.mark.parametrize("remat,accum,ok", [("auto", "auto", True), (True, 2, True), ("True", "4", True),
                                            ("sometimes", 1, False), (False, "many", False), (False, 0, False)])
def test_validate_reads_auto_and_refuses_other_words(remat, accum, ok, tiny_mae):
    c = config_lib.set_fields(tiny_mae(), remat, accum)
    if ok:
        config_lib.validate(c)
    else:
        with pytest.raises(config_lib.ConfigError, match="remat|accum_steps"):
            config_lib.validate(c)


def test_a_step_is_built_only_from_concrete_settings(tiny_mae):
    with pytest.raises(ValueError, match="resolve_auto"):
        step_lib.build(config_lib.set_fields(tiny_mae(), "auto", 1), 100)
    words = config_lib.concrete(config_lib.set_fields(tiny_mae(), "False", "2"))  # as typed on a command line
    assert (words.model.remat, words.optimizer.accum_steps) == (False, 2)


def test_a_teacher_without_a_path_is_the_named_vit_whatever_the_current_directory_holds(tmp_path, monkeypatch):
    from mimjax.configs import gpa_mae
    from mimjax.train import teacher

    (tmp_path / "config.json").write_text('{"model": {"name": "mae_vit_small_patch16"}}')  # e.g. inside a run
    monkeypatch.chdir(tmp_path)
    assert teacher.describe(gpa_mae.get_config("vit_base_patch16,feature")) == ("vit_base_patch16", 12, 12, 16)


def test_imagenet_recipes_ship_auto_and_runlocal_is_concrete():
    from mimjax.configs import gpa_mae, mae, simmim

    for recipe in (mae.get_config(), gpa_mae.get_config("vit_base_patch16,feature"), simmim.get_config()):
        assert (recipe.model.remat, recipe.optimizer.accum_steps) == ("auto", "auto")
    smoke = gpa_mae.get_config("vit_base_patch16,feature,runlocal")
    assert (smoke.model.remat, smoke.optimizer.accum_steps) == (False, 1)


@pytest.mark.slow
def test_resolve_auto_on_this_cpu_picks_the_plain_step(tiny_mae):
    cfg = tiny_mae(batch=8, remat="auto", accum="auto")
    out = plan.resolve_auto(cfg)  # compiles the tiny step here: host memory holds it easily
    assert (out.model.remat, out.optimizer.accum_steps) == (False, 1)
    assert plan.resolve_auto(out) is out  # nothing "auto": no compile, the same config


@pytest.mark.slow
def test_accumulation_gives_the_full_batch_update(tiny_mae):
    """accum 4 of 2 images = one step of 8 (the same masks: an image's mask follows its
    position in the batch), against the plain step; float32 on CPU. The weights after one
    AdamW step agree to 2% of the learning rate: Adam's first update is lr * g / (|g| + eps),
    so a gradient entry near zero turns float rounding into up to ~lr."""
    results = []
    for accum in (1, 4):
        c = tiny_mae(batch=8, accum=accum)
        c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 0
        built = step_lib.build(c, 100)
        state = jax.jit(built.init_state)(jax.random.key(0))
        images = {"image": jax.random.normal(jax.random.key(1), (8, 32, 32, 3))}
        new, m = jax.jit(built.make_step(None))(state, images, None, jax.random.key(2))
        results.append((m["loss"], m["grad_norm"], new.params))
    (l1, g1, p1), (l4, g4, p4) = results
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    np.testing.assert_allclose(g4, g1, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=0.02 * 1e-3)


# --- compiled for a TPU slice (libtpu) ------------------------------------------------------
@needs_libtpu
@pytest.mark.slow
def test_accumulation_lowers_tpu_memory(v5e4, tiny_mae):
    """The micro-batches are spread over the devices (each holds 1 / accum of its share at a
    time): on the TPU compiler, accumulation 4 needs at most 0.4x the plain step's temporaries
    (measured: 0.11x at 512 images a chip; before, when a device held all four micro-batches,
    1.11x for a ViT-T at 128 px, 256 images a chip)."""
    temp = {a: plan.compile_step(tiny_mae(batch=2048, img=64, accum=a), v5e4, "tpu").memory["temporaries"]
            for a in (1, 4)}
    assert temp[4] <= 0.4 * temp[1], temp


@needs_libtpu
@pytest.mark.slow
def test_fsdp_over_4_chips_splits_the_state_and_follows_the_mesh_rules(v5e4, tiny_mae):
    wide = dict(width=256, num_heads=4, decoder_width=128)  # most leaves large enough to shard (mesh.MIN_FSDP_SIZE)
    plain = plan.compile_step(tiny_mae(batch=8, **wide), v5e4, "tpu")
    cfg = tiny_mae(batch=8, **wide)
    cfg.parallelism.data, cfg.parallelism.fsdp = 1, 4
    sharded = plan.compile_step(cfg, v5e4, "tpu")
    assert sharded.mesh == {"data": 1, "fsdp": 4, "model": 1}
    # The state's leaves are split 4 ways (below); the TPU's (8, 128) tiles pad the smaller
    # shards (a [192, 64] patch-embedding shard takes [192, 128]), so not quite 1/4 here.
    assert sharded.memory["arguments"] <= 0.4 * plain.memory["arguments"]
    # Every state leaf arrives with the PartitionSpec mesh.py's rules give its path and shape.
    state_in = sharded.executable.input_shardings[0][0]
    abstract = jax.eval_shape(step_lib.build(cfg, 100).init_state, jax.random.key(0))
    want = mesh_lib.state_shardings(abstract, jax.tree.leaves(state_in)[0].mesh)
    leaves = jax.tree.leaves(abstract)
    got, rules = jax.tree.leaves(state_in), jax.tree.leaves(want)
    assert len(got) == len(rules) == len(leaves)
    for g, w, a in zip(got, rules, leaves):  # P() and P(None, None) are the same layout
        assert g.is_equivalent_to(w, a.ndim), (a.shape, g.spec, w.spec)
    sharded = sum(a.size for w, a in zip(rules, leaves) if "fsdp" in str(w.spec))
    assert sharded >= 0.95 * sum(a.size for a in leaves)  # all but the small leaves (biases, norms)


@needs_libtpu
@pytest.mark.slow
def test_plan_command_reports_json_and_exits_3_with_the_cheapest_fix(run_cli):
    base = ["plan", "--config", "configs/mae.py:vit_tiny_patch16,runlocal", "--target", "v5e-4", "--json",
            "--config.batch_size=16"]
    ok = run_cli(*base, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    r = json.loads(ok.stdout)
    for key in ("target", "devices", "mesh", "per_device_batch", "memory_bytes", "capacity_bytes", "fits",
                "flops_per_step", "flops_source", "settings", "collectives", "compile_s", "host_peak_bytes"):
        assert key in r, key
    assert (r["devices"], r["per_device_batch"], r["fits"], r["flops_source"]) == (4, 4, True, "xla")
    assert set(r["memory_bytes"]) >= {"arguments", "temporaries", "outputs", "total"}
    assert r["settings"]["dtype"] == "float32" and "all-reduce" in r["collectives"]  # runlocal keeps float32
    assert r["settings"]["scan"] is False  # the recipe's scan "auto": unrolled without remat
    # With remat, "auto" scans the blocks on TPU: the report says so, counts the FLOPs
    # analytically and says the collectives inside the loop are counted once.
    scanned = run_cli(*[a for a in base if a != "--json"], "--config.model.remat=True", timeout=600)
    assert scanned.returncode == 0, scanned.stderr[-2000:]
    assert "model.remat=True, optimizer.accum_steps=1, dtype float32, attention auto, scanned blocks" in \
        scanned.stdout
    assert "XLA counts a loop body once" in scanned.stdout and "a loop body counted once" in scanned.stdout
    # A 1.6 B parameter encoder (width 8192): its weights and AdamW moments alone pass a
    # v5e's 16 GiB, so no remat / accumulation setting fits either, and none is compiled.
    big = [*base, "--config.model.width=8192", "--config.model.num_heads=64", "--config.batch_size=4"]
    no = run_cli(*big)
    assert no.returncode == 3, no.stderr[-2000:]
    line = no.stderr.strip().splitlines()[-1]
    assert line.startswith("mimjax plan: does not fit v5e-4: stopped at model.remat=False, optimizer.accum_steps=1: "
                           "the arguments alone") and "raise parallelism.fsdp" in line
    r = json.loads(no.stdout)
    assert not r["fits"] and r["suggestion"] is None and r["memory_bytes"]["arguments"] > 16 * 2 ** 30


# --- compiled for a GPU host (the CUDA plugin, ~5.5 GB: not in CI, run where installed) -------
HAS_CUDA_PLUGIN = __import__("importlib").util.find_spec("jax_cuda12_plugin") is not None


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="the CUDA plugin is installed here")
def test_gpu_target_without_the_cuda_plugin_is_one_line(run_cli):
    p = run_cli("plan", "--config", "configs/demo.py", "--target", "h100x8", timeout=300)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "mimjax plan: --target h100x8: compiling for an NVIDIA GPU needs JAX's CUDA plugin: pip install -e "
        "\".[gpu]\" -c requirements.txt (in the mimjax clone, ~5.5 GB)"]


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="JAX's CUDA plugin (mimjax[gpu]) not installed")
@pytest.mark.slow
def test_plan_on_an_8_gpu_host(run_cli):
    p = run_cli("plan", "--config", "configs/mae.py:vit_tiny_patch16,runlocal", "--target", "h100x8", "--json",
                env={"CUDA_VISIBLE_DEVICES": "-1"})
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert (r["platform"], r["devices"], r["per_device_batch"], r["fits"]) == ("gpu", 8, 1, True)
    assert r["capacity_bytes"] == int(targets.CHIPS["h100"].memory_bytes * targets.gpu_mem_fraction())
    assert r["flops_source"].startswith("analytic") and r["flops_per_step"] > 0  # the GPU backend gives no count


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"), reason="glibc's malloc_trim")
def test_freed_compiler_memory_goes_back_to_the_system():
    """What one candidate's compile freed is returned before the next (`release_freed_memory`):
    a heap of small blocks, all but every 64th freed, keeps its pages until then."""
    child = """
import ctypes, json
from mimjax.train.plan import release_freed_memory
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [libc.malloc(16384) for _ in range(20000)]  # 320 MB under the mmap threshold: the heap
for b in blocks: ctypes.memset(b, 1, 16384)
for i, b in enumerate(blocks):
    if i % 64: libc.free(b)
held = rss(); release_freed_memory(); print(json.dumps([held, rss()]))
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GLIBC_TUNABLES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    held, after = json.loads(out.stdout)
    assert held - after > 200e6, (held, after)
