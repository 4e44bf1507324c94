"""Devices: the mesh and sharding rules (`mesh`) and the jit / pmap step runners (`runners`)."""
from mimjax.parallel.runners import AXIS, JitParallel, PmapParallel, make

__all__ = ["AXIS", "JitParallel", "PmapParallel", "make"]
