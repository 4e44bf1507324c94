"""Device mesh and sharding rules for the `jit` parallelism (what pjit became).

Mesh axes: `data` x `fsdp` x `model`. The batch is split over data x fsdp. Every leaf of
the train state (params, optimizer moments, EMA teacher) gets a PartitionSpec from:
1. tensor-parallel rules (regex on the leaf path -> which dimensions go on `model`),
   applied when the mesh has a model axis > 1 and the dimension divides;
2. FSDP: the largest remaining dimension divisible by the fsdp size goes on `fsdp`
   (leaves smaller than `min_fsdp_size` elements stay replicated);
3. otherwise replicated.
"""
from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
MIN_FSDP_SIZE = 2 ** 12

# (path regex, dimension indices to put on `model`): Megatron-style split of attention
# heads and the MLP hidden dimension; paths are "encoder/blocks/block_0/attn/query/kernel".
MODEL_RULES = (
    (r"attn/(query|key|value)/kernel$", 1),  # [D, H, hd]: heads
    (r"attn/(query|key|value)/bias$", 0),  # [H, hd]
    (r"attn/out/kernel$", 0),  # [H, hd, D]
    (r"mlp/fc1/kernel$", 1),  # [D, 4D]
    (r"mlp/fc1/bias$", 0),  # [4D]
    (r"mlp/fc2/kernel$", 0),  # [4D, D]
)


def mesh_shape(pcfg, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, model) sizes; one of them may be -1 (= the remaining devices)."""
    sizes = [pcfg.data, pcfg.fsdp, pcfg.model]
    known = int(np.prod([s for s in sizes if s != -1]))
    if sizes.count(-1) > 1 or known <= 0 or num_devices % known:
        raise ValueError(f"parallelism data x fsdp x model = {tuple(sizes)} does not fit {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"parallelism data x fsdp x model = {tuple(sizes)} uses {np.prod(sizes)} "
                         f"devices, but there are {num_devices}")
    return tuple(sizes)


def make_mesh(pcfg, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(pcfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    spec = [None] * len(shape)
    model, fsdp = mesh.shape["model"], mesh.shape["fsdp"]
    if model > 1:
        for pattern, dim in MODEL_RULES:
            if re.search(pattern, path) and dim < len(shape) and shape[dim] % model == 0:
                spec[dim] = "model"
                break
    if fsdp > 1 and int(np.prod(shape, dtype=np.int64)) >= MIN_FSDP_SIZE:
        free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % fsdp == 0]
        if free:
            spec[max(free, key=lambda d: (shape[d], -d))] = "fsdp"
    return P(*spec)


def state_shardings(abstract_state, mesh: Mesh):
    """NamedSharding for every leaf of a pytree of arrays / ShapeDtypeStructs."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(_path_str(path), tuple(x.shape), mesh)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))
