"""Data parallelism, written once: the same per-device step under jit+Mesh or under pmap.

A step function is written for one device's view of the batch and takes an `axis_name`:
- `jit`: `jax.jit` over a 1D `Mesh` named "data". The step sees the global batch (sharded
  on "data"), state is replicated and donated, and XLA inserts the gradient all-reduce.
  It is called with `axis_name=None`.
- `pmap`: `jax.pmap` over the local devices; the step sees a device's slice of the batch
  and averages gradients and metrics with `lax.pmean(..., "data")`. State goes in with
  `in_axes=None` and comes out with `out_axes=None`: it is never stacked by hand.
Both give the same numbers as one device on the same global batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments.config import ConfigError

AXIS = "data"
MODES = ("jit", "pmap")


class DataParallel:
  """Places state and batches on devices and compiles steps for `mode` (jit or pmap)."""

  def __init__(self, mode: str = "jit", num_devices: int = 0):
    if mode not in MODES:
      raise ConfigError(f"unknown --parallel={mode!r}; known: {', '.join(MODES)}")
    local = jax.local_devices()
    if num_devices > len(local):
      raise ConfigError(f"--num_devices={num_devices} but this process has {len(local)} devices")
    if num_devices and jax.process_count() > 1:
      raise ConfigError("--num_devices applies to a single process; multi-process runs use all devices")
    self.mode = mode
    self.local_devices = local[:num_devices] if num_devices else local
    devices = self.local_devices if num_devices else jax.devices()
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def check_batch_size(self, batch_size: int, what: str = "--batch_size") -> None:
    if batch_size % self.num_devices:
      raise ConfigError(f"{what}={batch_size} is not divisible by the {self.num_devices} devices "
                       f"({jax.process_count()} processes x {len(self.local_devices)} local); "
                       f"use a multiple of {self.num_devices}")

  def put_state(self, state: Any) -> Any:
    """Replicates a state pytree on every device."""
    return jax.device_put(state, self.replicated)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's batch -> the global batch, split over devices."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded, x), batch)

  def compile(self, step: Callable[..., Any], *, donate_state: bool) -> Callable[..., Any]:
    """`step(state, batch, *rest, axis_name=...) -> (state_or_sums, metrics...)` on all devices."""
    donate = (0,) if donate_state else ()
    if self.mode == "pmap":
      def per_device(state, batch, *rest):
        return step(state, batch, *rest, axis_name=AXIS)
      return jax.pmap(per_device, axis_name=AXIS, in_axes=(None, 0, None), out_axes=None,
                      devices=self.local_devices, donate_argnums=donate)
    def global_batch(state, batch, *rest):
      return step(state, batch, *rest, axis_name=None)
    return jax.jit(global_batch, in_shardings=(self.replicated, self.sharded, self.replicated),
                   out_shardings=self.replicated, donate_argnums=donate)
