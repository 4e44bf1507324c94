"""Accelerators `mimjax plan` compiles for from any machine: a TPU slice (libtpu, the `[tpu]`
extra) or a GPU host (the CUDA plugin, the `[gpu]` extra), by name.

    v4-32, v5e-16, v5e-256, v5p-128, v6e-64      a TPU slice, Cloud TPU's names: the number is
                                                 TensorCores (2 a chip on v4 / v5p), so v4-32
                                                 is 16 chips; 2xv5e-256: two slices
    h100x8, h200x8, a100x8                       one host of 8 GPUs (h100x1: one GPU)
    4xh100x8                                     4 such hosts

One JAX device is one chip (v4 / v5p in megacore mode, as JAX runs them) or one GPU. The
numbers per chip (memory, dense bf16 peak, HBM bandwidth) are the vendors' nominal ones.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

from mimjax import procenv

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    platform: str  # "tpu" | "gpu" (JAX's backend name)
    kind: str  # as `device.device_kind` names it
    memory_bytes: int
    peak_bf16: float  # dense FLOP/s
    hbm_bandwidth: float  # bytes/s
    cores_per_chip: int = 1  # TensorCores a chip counts for in a TPU slice's name
    torus_dims: int = 2  # TPU: the slice's topology is 2D (v5e, v6e) or 3D (v4, v5p)
    gpu: dict | None = None  # GPU: the device description XLA compiles for (see `_gpu_target_config`)


CHIPS = {
    "v4": Chip("tpu", "TPU v4", 32 * GiB, 275e12, 1.2e12, cores_per_chip=2, torus_dims=3),
    "v5e": Chip("tpu", "TPU v5 lite", 16 * GiB, 197e12, 0.819e12),
    "v5p": Chip("tpu", "TPU v5", 95 * GiB, 459e12, 2.765e12, cores_per_chip=2, torus_dims=3),
    "v6e": Chip("tpu", "TPU v6 lite", 32 * GiB, 918e12, 1.64e12),
    "h100": Chip("gpu", "NVIDIA H100 80GB HBM3", 84_942_979_072, 989e12, 3.35e12,
                 gpu=dict(sm=132, clock_ghz=1.98, l2=50 * 2 ** 20, cc=(9, 0), smem_core=233472, smem_optin=232448)),
    "h200": Chip("gpu", "NVIDIA H200", 150_754_820_096, 989e12, 4.8e12,
                 gpu=dict(sm=132, clock_ghz=1.98, l2=50 * 2 ** 20, cc=(9, 0), smem_core=233472, smem_optin=232448)),
    "a100": Chip("gpu", "NVIDIA A100-SXM4-80GB", 85_899_345_920, 312e12, 2.039e12,
                 gpu=dict(sm=108, clock_ghz=1.41, l2=40 * 2 ** 20, cc=(8, 0), smem_core=167936, smem_optin=166912)),
}
def chip_of_device_kind(device_kind: str) -> Chip | None:
    """The CHIPS entry of a `device.device_kind` ("NVIDIA H100 PCIe", "TPU v5 lite"), or None:
    a TPU by its exact kind, a GPU by its family's name in the kind (a GH200 as an H200)."""
    kind = device_kind.strip().lower()
    for chip in CHIPS.values():
        if chip.platform == "tpu" and kind == chip.kind.lower():
            return chip
    for name in ("h200", "h100", "a100"):
        if name in kind:
            return CHIPS[name]
    return None


# The share of a GPU's memory JAX's allocator takes (XLA_PYTHON_CLIENT_MEM_FRACTION): the
# `mimjax` command sets it unless the user chose one (mimjax/procenv.py); JAX's own default is 0.75.
GPU_MEM_FRACTION = float(procenv.GPU_MEM_FRACTION)

# The largest slice Cloud TPU schedules, in chips (a v4 pod; v5p: its largest power of two)
MAX_SLICE_CHIPS = {"v4": 4096, "v5e": 256, "v5p": 4096, "v6e": 256}
MAX_DEVICES = 65536  # slices x chips or hosts x GPUs: a bound on typos, past the largest jobs planned here
_TPU = re.compile(r"^(?:(\d+)x)?(v4|v5e|v5p|v6e)-(\d+)$")
_GPU = re.compile(r"^(?:(\d+)x)?(h100|h200|a100)x(\d+)$")
EXAMPLES = "v4-32, v5e-16, v5e-256, v5p-128, v6e-64, h100x8, h200x8, a100x8, 4xh100x8"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    chip_name: str
    chips: int  # per slice (TPU) or per host (GPU)
    groups: int = 1  # slices (TPU) or hosts (GPU)

    @property
    def chip(self) -> Chip:
        return CHIPS[self.chip_name]

    @property
    def platform(self) -> str:
        return self.chip.platform

    @property
    def num_devices(self) -> int:
        return self.chips * self.groups

    @property
    def capacity_bytes(self) -> int:
        """The memory a step may use on one device: the chip's, or on a GPU the share JAX's
        allocator takes (XLA_PYTHON_CLIENT_MEM_FRACTION, as the `mimjax` command sets it)."""
        if self.platform != "gpu":
            return self.chip.memory_bytes
        return int(self.chip.memory_bytes * gpu_mem_fraction())

    def topology(self) -> str:
        """libtpu's topology name ("v5e:16x16") or the CUDA plugin's ("1x<hosts>x<gpus>")."""
        if self.platform == "gpu":
            return f"1x{self.groups}x{self.chips}"
        dims = [2, 2, 1] if self.chip.torus_dims == 3 else [1, 1]
        while math.prod(dims) < self.chips:  # double the smallest side, the last of equals
            i = max(range(len(dims)), key=lambda d: (-dims[d], d))
            dims[i] *= 2
        return f"{self.chip_name}:{'x'.join(map(str, dims))}"

    def devices(self):
        """Compile-only devices of the target (no hardware needed); a missing libtpu or CUDA
        plugin is a ValueError naming the extra to install."""
        from jax.experimental import topologies

        if self.platform == "tpu":
            if importlib.util.find_spec("libtpu") is None:
                raise ValueError(f"--target {self.name}: compiling for a TPU needs libtpu: "
                                 f'pip install -e ".[tpu]" -c requirements.txt (in the mimjax clone)')
            kw = {"chip_config_name": "megacore"} if self.chip.cores_per_chip == 2 else {}
            if self.groups > 1:
                kw["num_slices"] = self.groups
            if self.chips < 4:  # libtpu's default host is 2x2 chips: v5e-1 / v5e-2 are one smaller host
                kw["chips_per_host_bounds"] = [*map(int, self.topology().split(":")[1].split("x")), 1]
            return list(topologies.get_topology_desc(topology_name=self.topology(), platform="tpu", **kw).devices)
        if not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
            raise ValueError(f"--target {self.name}: compiling for an NVIDIA GPU needs JAX's CUDA plugin: "
                             f'pip install -e ".[gpu]" -c requirements.txt (in the mimjax clone, ~5.5 GB)')
        return list(topologies.get_topology_desc(platform="cuda", topology=self.topology(),
                                                 target_config=_gpu_target_config(self.chip)).devices)


def compile_only_env(target: Target, env) -> dict:
    """The environment variables to set, before JAX starts, in a process that compiles for
    `target` without running on it (the `mimjax plan` command): the host's own backend is the
    CPU; libtpu is told it runs on no TPU host (else it prints warnings looking for one); the
    CUDA plugin skips its driver check. The user's own values are kept (XLA_FLAGS is added to)."""
    out = {"JAX_PLATFORMS": "cpu"}
    if target.platform == "tpu":
        # Compiling takes no TPU: other processes may load libtpu at the same time.
        out.update(TPU_WORKER_HOSTNAMES="localhost", TPU_ACCELERATOR_TYPE=f"{target.chip_name}-{target.chips}",
                   ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    else:
        out["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
        flags = env.get("XLA_FLAGS", "")
        if "xla_gpu_enable_triton_gemm" not in flags:
            # Without a GPU to autotune on, XLA's Triton GEMM emitter fails on some of the GPA
            # head's matmuls ("Couldn't find output tile sizes"); with cuBLAS GEMMs the step
            # compiles (the buffers, hence the memory plan, are the same).
            out["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()
    return {k: v for k, v in out.items() if not env.get(k) or k == "XLA_FLAGS"}


def gpu_mem_fraction() -> float:
    try:
        return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION))
    except ValueError:
        return GPU_MEM_FRACTION


def parse(name: str) -> Target:
    """A target name -> Target; anything else is a ValueError naming the value and the forms."""
    m = _TPU.match(name.strip().lower())
    if m:
        groups, chip, cores = int(m[1] or 1), m[2], int(m[3])
        per = CHIPS[chip].cores_per_chip
        chips = cores // per
        smallest = 4 if CHIPS[chip].torus_dims == 3 else 1
        if cores % per or not smallest <= chips <= MAX_SLICE_CHIPS[chip] or chips & (chips - 1):
            unit = "TensorCores" if per == 2 else "chips"
            raise ValueError(f"--target {name!r}: {cores} {unit}; a {chip} slice has a power of two from "
                             f"{smallest * per} to {MAX_SLICE_CHIPS[chip] * per} {unit} (e.g. {chip}-{8 * per})")
        _check_groups(name, groups, "slices", f"{chips} chips", MAX_DEVICES // chips, f"2x{chip}-{cores}")
        return Target(name, chip, chips, groups)
    m = _GPU.match(name.strip().lower())
    if m:
        groups, chip, gpus = int(m[1] or 1), m[2], int(m[3])
        if not 1 <= gpus <= 8:
            raise ValueError(f"--target {name!r}: {gpus} GPUs a host; a GPU host has 1 to 8 GPUs (e.g. {chip}x8; "
                             f"4x{chip}x8 for 4 hosts)")
        _check_groups(name, groups, "hosts", f"{gpus} GPUs", MAX_DEVICES // gpus, f"4x{chip}x{gpus}")
        return Target(name, chip, gpus, groups)
    raise ValueError(f"--target {name!r}: expected a TPU slice or a GPU host, e.g. {EXAMPLES}")


def _check_groups(name: str, groups: int, what: str, each: str, most: int, example: str) -> None:
    """The count before the first "x" (slices or hosts): 1 to `most` (MAX_DEVICES devices in all)."""
    if not 1 <= groups <= most:
        raise ValueError(f"--target {name!r}: {groups} {what}; expected 1 to {most:,} {what} of {each} "
                         f"({MAX_DEVICES:,} devices in all at most), e.g. {example}")


def _gpu_target_config(chip: Chip) -> str:
    """The GpuTargetConfigProto (text) XLA compiles for: the device's own description, as
    `nvidia-smi` / cudaGetDeviceProperties give it."""
    g = chip.gpu
    major, minor = g["cc"]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {g['smem_core']}
  threads_per_core_limit: 2048
  core_count: {g['sm']}
  fpus_per_core: {128 if major >= 9 else 64}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bandwidth)}
  l2_cache_size: {g['l2']}
  clock_rate_ghz: {g['clock_ghz']}
  device_memory_size: {chip.memory_bytes}
  shared_memory_per_block_optin: {g['smem_optin']}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{chip.kind}"
"""
