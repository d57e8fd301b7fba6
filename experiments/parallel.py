"""Data parallelism and sharded parameters, written once: the same step under jit or pmap.

A step function is written for one device's view of the batch and takes an `axis_name`:
- `jit`: `jax.jit` over a device `Mesh` with axes ("data", "fsdp"). The step sees the global
  batch, split over every device of the mesh, and XLA inserts the collectives. With `fsdp`
  of size 1 (the default) parameters and optimizer state are replicated; with `--parallel.mesh=data:D,fsdp:F`
  every array of at least `FSDP_MIN_SIZE` elements is split over the F devices of an "fsdp"
  group along its largest dimension divisible by F (as ZeRO-3/FSDP do), and XLA gathers it
  where a layer needs it. It is called with `axis_name=None`.
- `pmap`: `jax.pmap` over the local devices; the step sees a device's slice of the batch
  and averages gradients and metrics with `lax.pmean(..., "data")`. State goes in with
  `in_axes=None` and comes out with `out_axes=None`: it is never stacked by hand.
All of them give the numbers of one device on the same global batch (to float rounding).
Devices span every process of a multi-process run; each process feeds its own rows of the
global batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments.config import ConfigError

AXIS = "data"
AXES = ("data", "fsdp")
MODES = ("jit", "pmap")
FSDP_MIN_SIZE = 1024  # smaller arrays (biases, norms, scalars) stay replicated


def parse_mesh(text: str, num_devices: int) -> dict[str, int]:
  """'data:2,fsdp:2' -> {"data": 2, "fsdp": 2}. Empty: every device on "data"; one size may be
  -1 (the devices left over)."""
  sizes = {"data": -1, "fsdp": 1}
  if text:
    sizes = {"data": 1, "fsdp": 1}
    seen = set()
    for part in text.split(","):
      name, _, size = part.partition(":")
      name = name.strip()
      if name not in AXES:
        raise ConfigError(f"--parallel.mesh={text!r}: unknown axis {name!r}; axes are {', '.join(AXES)}")
      if name in seen:
        raise ConfigError(f"--parallel.mesh={text!r}: axis {name!r} given twice")
      seen.add(name)
      try:
        sizes[name] = int(size)
      except ValueError:
        raise ConfigError(f"--parallel.mesh={text!r}: {part!r} is not AXIS:SIZE") from None
      if sizes[name] == 0 or sizes[name] < -1:
        raise ConfigError(f"--parallel.mesh={text!r}: sizes are positive (or -1: the rest)")
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f"--parallel.mesh={text!r}: at most one axis may be -1")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"--parallel.mesh={text!r}: {num_devices} devices do not divide into groups of {fixed}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"--parallel.mesh={text!r} has {math.prod(sizes.values())} devices but the run has {num_devices}")
  return sizes


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Where an array of `shape` is split over "fsdp": its largest dimension divisible by `fsdp`
  (none when fsdp is 1, the array is small, or no dimension divides)."""
  if fsdp == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0:
      return P(*(("fsdp" if i == d else None) for i in range(len(shape))))
  return P()


class DataParallel:
  """Places state and batches on devices and compiles steps for `mode` (jit or pmap)."""

  def __init__(self, mode: str = "jit", num_devices: int = 0, mesh: str = ""):
    if mode not in MODES:
      raise ConfigError(f"unknown --parallel.mode={mode!r}; known: {', '.join(MODES)}")
    local = jax.local_devices()
    if num_devices > len(local):
      raise ConfigError(f"--parallel.num_devices={num_devices} but this process has {len(local)} devices")
    if num_devices and jax.process_count() > 1:
      raise ConfigError("--parallel.num_devices applies to a single process; multi-process runs use all devices")
    self.mode = mode
    self.pmap_devices = local[:num_devices] if num_devices else None  # None: every process's devices
    self.local_devices = local[:num_devices] if num_devices else local
    devices = self.local_devices if num_devices else jax.devices()
    self.sizes = parse_mesh(mesh, len(devices))
    if mode == "pmap" and self.sizes["fsdp"] > 1:
      raise ConfigError("--parallel.mode=pmap replicates parameters; --parallel.mesh with fsdp > 1 needs "
                        "--parallel.mode=jit")
    # Devices in process order, so each process's devices hold consecutive rows of the batch.
    self.mesh = Mesh(np.asarray(devices).reshape(self.sizes["data"], self.sizes["fsdp"]), AXES)
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXES))  # the batch: split over every device
    self.sharded_items = NamedSharding(self.mesh, P(None, AXES))  # [steps, batch, ...]: split by batch

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def describe(self) -> str:
    procs = f"{jax.process_count()} process(es), " if jax.process_count() > 1 else ""
    mesh = f", mesh data:{self.sizes['data']},fsdp:{self.sizes['fsdp']}" if self.sizes["fsdp"] > 1 else ""
    return f"{procs}{self.num_devices} device(s), --parallel.mode={self.mode}{mesh}"

  def check_batch_size(self, batch_size: int, what: str = "--batch_size") -> None:
    if batch_size % self.num_devices:
      raise ConfigError(f"{what}={batch_size} is not divisible by the {self.num_devices} devices "
                       f"({jax.process_count()} processes x {len(self.local_devices)} local); "
                       f"use a multiple of {self.num_devices}")

  def state_sharding(self, abstract_state: Any) -> Any:
    """The sharding of every array of a state (arrays or their shapes): see `fsdp_spec`."""
    return jax.tree.map(lambda x: NamedSharding(self.mesh, fsdp_spec(tuple(x.shape), self.sizes["fsdp"])),
                        abstract_state)

  def describe_sharding(self, state: Any, sharding: Any) -> str:
    """How much of a state is split over "fsdp"."""
    sizes = [(int(np.prod(x.shape)), "fsdp" in jax.tree.leaves(tuple(s.spec)))
             for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(sharding))]
    split = [n for n, is_split in sizes if is_split]
    total = sum(n for n, _ in sizes)
    return (f"fsdp: {len(split)} of {len(sizes)} state arrays split over {self.sizes['fsdp']} devices "
            f"({100 * sum(split) / max(total, 1):.1f}% of the state's elements)")

  def global_state(self, state: Any) -> Any:
    """The state as arrays over the whole mesh (what checkpoints save). pmap returns each
    process's own replica; every other state is already global."""
    if self.mode != "pmap" or jax.process_count() == 1:
      return state
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.host_local_array_to_global_array(state, self.mesh, P())

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of the batch -> the global batch, split over devices."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded, x), batch)

  def put_items(self, items: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of k steps' feed items, [k, rows, ...] -> split over devices by row
    (pmap: [devices, k, rows / devices, ...])."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: np.swapaxes(x.reshape((x.shape[0], n, x.shape[1] // n) + x.shape[2:]), 0, 1),
                          items)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded_items, x), items)

  def put_resident(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Arrays every process holds whole -> one copy on every device."""
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index]),
                        arrays)

  def compile_steps(self, step: Callable[..., Any], take: Callable[..., Any], state_sharding: Any) -> Callable[..., Any]:
    """`(state, resident, items, rng) -> (state, metrics)`: `step(state, batch, rng, axis_name=...)`
    run once for each of the k items (a `lax.scan`: one dispatch), each step's batch
    `take(resident, item)`; metrics come stacked, [k, ...]. The state is donated."""

    def steps(state, resident, items, rng, axis_name):
      def body(state, item):
        return step(state, take(resident, item), rng, axis_name=axis_name)
      if jax.tree.leaves(items)[0].shape[0] == 1:  # one step: no loop (XLA compiles it faster)
        state, metrics = body(state, jax.tree.map(lambda x: x[0], items))
        return state, jax.tree.map(lambda m: m[None], metrics)
      return jax.lax.scan(body, state, items)

    if self.mode == "pmap":
      def train_steps_per_device(state, resident, items, rng):
        return steps(state, resident, items, rng, AXIS)
      return jax.pmap(train_steps_per_device, axis_name=AXIS, in_axes=(None, None, 0, None), out_axes=None,
                      devices=self.pmap_devices, donate_argnums=(0,))

    def train_steps(state, resident, items, rng):
      return steps(state, resident, items, rng, None)
    return jax.jit(train_steps, in_shardings=(state_sharding, self.replicated, self.sharded_items, self.replicated),
                   out_shardings=(state_sharding, self.replicated), donate_argnums=(0,))

  def compile(self, step: Callable[..., Any], state_sharding: Any, *, returns_state: bool) -> Callable[..., Any]:
    """`step(state, batch, *rest, axis_name=...)` on all devices; it returns `(state, metrics)`
    (the state is then donated) or only metrics."""
    donate = (0,) if returns_state else ()
    if self.mode == "pmap":
      def per_device(state, batch, *rest):
        return step(state, batch, *rest, axis_name=AXIS)
      return jax.pmap(per_device, axis_name=AXIS, in_axes=(None, 0, None), out_axes=None,
                      devices=self.pmap_devices, donate_argnums=donate)
    def global_batch(state, batch, *rest):
      return step(state, batch, *rest, axis_name=None)
    out = (state_sharding, self.replicated) if returns_state else self.replicated
    return jax.jit(global_batch, in_shardings=(state_sharding, self.sharded, self.replicated),
                   out_shardings=out, donate_argnums=donate)
