"""The two ways a train step runs on many devices, behind one small interface.

- `JitParallel` (parallelism.mode = "jit"): one global program over a `data x fsdp x model`
  mesh; state sharded by the rules in mimjax/parallel/mesh.py; `NamedSharding` in/out
  shardings on the jitted step; the state buffers are donated.
- `PmapParallel` (parallelism.mode = "pmap"): classic data parallelism; the state is
  replicated with a leading device axis, each device gets its slice of the batch, and the
  step averages gradients with `lax.pmean`.

Both keep checkpoints and snapshots in one global layout (`to_global` / `from_global`),
so a run can be resumed in the other mode or on another number of devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mimjax.parallel import mesh as sharding
from mimjax.data.prefetch import device_put_fn

AXIS = "batch"  # the pmap axis name


class JitParallel:
    def __init__(self, pcfg, abstract_state, devices=None):
        self.mesh = sharding.make_mesh(pcfg, devices)  # this run's devices, or a target's (mimjax plan)
        self.replicated = NamedSharding(self.mesh, P())
        self.state_sharding = sharding.state_shardings(abstract_state, self.mesh)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.put_batch = device_put_fn(self.batch_sharding)  # host batch -> global array over data x fsdp

    def compile_step(self, make_step):
        return jax.jit(make_step(None),
                       in_shardings=(self.state_sharding, self.batch_sharding, self.replicated, self.replicated),
                       out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

    def init_state(self, init_fn):
        return jax.jit(init_fn, out_shardings=self.state_sharding)()

    def from_global(self, state):
        return state

    def to_global(self, state):
        return state

    def host_metrics(self, metrics):
        return metrics


class PmapParallel:
    def __init__(self, pcfg, abstract_state):
        del pcfg  # pmap uses every device for data parallelism
        self.mesh = sharding.make_mesh(_AllData())
        self.replicated = NamedSharding(self.mesh, P())
        self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract_state)
        self.local = jax.local_devices()
        # Leading axis over this process's devices: the layout pmap reads and writes.
        self.stacked = NamedSharding(jax.sharding.Mesh(np.asarray(self.local), (AXIS,)), P(AXIS))

    def compile_step(self, make_step):
        return jax.pmap(make_step(AXIS), axis_name=AXIS, in_axes=(0, 0, None, None), donate_argnums=(0,))

    def put_batch(self, batch):
        """[L, ...] of this process -> [local devices, L / local devices, ...] on them."""
        n = len(self.local)

        def put(x):
            return jax.device_put(np.asarray(x).reshape(n, x.shape[0] // n, *x.shape[1:]), self.stacked)

        return jax.tree.map(put, batch)

    def init_state(self, init_fn):
        return self.from_global(jax.jit(init_fn, out_shardings=self.replicated)())

    def from_global(self, state):
        """Globally replicated arrays -> a copy on each local device (leading axis)."""
        n = len(self.local)

        def spread(x):
            local = x.addressable_data(0)
            return jax.device_put(jnp.broadcast_to(local, (n, *local.shape)), self.stacked)

        return jax.tree.map(spread, state)

    def to_global(self, state):
        """Per-device copies (identical) -> globally replicated arrays, for Orbax and jit."""
        def gather(x):
            host = np.asarray(x.addressable_data(0)[0])  # [1, ...] slice of device 0
            return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

        return jax.tree.map(gather, state)

    def host_metrics(self, metrics):
        return jax.tree.map(lambda x: x.addressable_data(0)[0], metrics)


class _AllData:
    data, fsdp, model = -1, 1, 1


def make(pcfg, abstract_state):
    return {"jit": JitParallel, "pmap": PmapParallel}[pcfg.mode](pcfg, abstract_state)
