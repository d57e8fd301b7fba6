"""Training steps k at a time: one dispatch to the devices runs k steps, fed by a `Feed`.

The loop sees one small interface, `Steps`:

    steps = Steps(config, par, feed, step_fn, state, state_sharding, rng)
    steps.compile(start)                 # the programs the run needs, before the clock starts
    with steps.spans(start) as spans:    # every dispatch from `start` to --steps
      for span in spans:                 # span.first, span.k, span.end; inputs already placed
        state, metrics = steps(state, span)   # metrics stacked, [k, ...]

Behind it:
- a dispatch is `k` steps in one `lax.scan` (`DataParallel.compile_steps`), so tiny steps
  do not each pay the host's dispatch cost. `k` is `--runtime.steps_per_dispatch`, or by
  default the largest divisor of the loop's period (the gcd of --steps, --log_every,
  --eval_every and --checkpoint_every) whose steps fit in `DISPATCH_FLOPS` (XLA's count of
  the lowered step; off the CPU the step's matrix products counted from its trace when more,
  as XLA's count there leaves out cuBLAS's). Dispatches never cross a step that logs,
  evaluates or checkpoints (`plan`); the programs for each k are compiled once.
- a background thread prepares each dispatch's feed items (indices, window starts or whole
  batches) and puts them on the devices, `depth` dispatches ahead (`Prefetch`).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import numpy as np

from experiments import flops as flops_lib
from experiments import feed as feed_lib
from experiments.config import Config
from experiments.parallel import DataParallel
from experiments.runtime import host_memory

# --runtime.steps_per_dispatch=0 runs as many steps per dispatch as fit in about this many
# FLOPs: a fraction of a second on a CPU, far less on an accelerator, so a run still answers
# SIGTERM promptly, while the per-dispatch overhead of tiny steps vanishes.
DISPATCH_FLOPS = 1e10


class Span(NamedTuple):
  """One dispatch: steps first .. first + k - 1, and their feed items on the devices."""

  first: int
  k: int
  items: Any

  @property
  def end(self) -> int:
    return self.first + self.k


def plan(start: int, stop: int, k: int, periods: Sequence[int], points: Sequence[int] = ()) -> list[tuple[int, int]]:
  """(first step, steps) of each dispatch from `start` to `stop`: `k` steps at a time, never
  across a multiple of one of `periods` (when the loop logs, evaluates or checkpoints) or
  one of `points` (where a profile starts and ends)."""
  periods = [p for p in periods if p > 0]
  chunks, step = [], start
  while step < stop:
    end = min([stop, step + k] + [(step // p + 1) * p for p in periods] + [p for p in points if p > step])
    chunks.append((step, end - step))
    step = end
  return chunks


class Prefetch:
  """Iterates over the `Span`s of the planned dispatches; a background thread reads and
  places their items `depth` dispatches ahead of the consumer."""

  def __init__(self, feed: feed_lib.Feed, chunks: list[tuple[int, int]], put: Callable[[Any], Any], depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(feed, chunks, put), daemon=True)
    self._thread.start()

  def _work(self, feed, chunks, put):
    try:
      for step, k in chunks:
        item = Span(step, k, put(feed.items(step, k)))
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(StopIteration())
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._queue.put(e)

  def __iter__(self):
    return self

  def __next__(self) -> Span:
    item = self._queue.get()
    if isinstance(item, BaseException):
      self._queue.put(item)  # every later call raises it too
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)


def _host_buffer_bytes(compiled: Any) -> int:
  """A compiled program's temporary buffers in host memory: its temp size on each CPU device
  it runs on in this process (0 off the CPU, or if XLA does not say)."""
  if jax.default_backend() != "cpu":
    return 0
  try:
    return compiled.memory_analysis().temp_size_in_bytes * jax.local_device_count()
  except Exception:  # pylint: disable=broad-except
    return 0


def xla_counts_products(par: DataParallel) -> bool:
  """Whether XLA's cost analysis counts the matrix products: on the CPU; not on a GPU, where
  it leaves out those it hands to cuBLAS and cuDNN (nanoGPT's GPU config on an H200: 40 or
  322 GFLOP a step by XLA's count, 1,162 in its products)."""
  return par.local_devices[0].platform == "cpu"


class Steps:
  """The run's training steps, dispatched k at a time (module docstring)."""

  def __init__(self, config: Config, par: DataParallel, feed: feed_lib.Feed, step: Callable[..., Any], state: Any,
               state_sharding: Any, rng: jax.Array):
    self.config, self.par, self.feed, self.rng = config, par, feed, rng
    self.resident = par.put_resident(feed.resident)
    self._p_steps = par.compile_steps(step, feed.take, state_sharding)
    if par.mode == "jit":  # lowered from shapes, so that nothing holds on to the state given here
      state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    self._state = state
    self._one = par.put_items(feed.zeros())  # one step's items, for their shapes
    self._lowered: dict[int, Any] = {}
    self._compiled: dict[int, Any] = {}
    self.compile_s = 0.0
    self.periods = (config.log_every, config.eval_every, config.checkpoint_every)
    period = math.gcd(config.steps, *[p for p in self.periods if p])
    if config.runtime.steps_per_dispatch:
      self.k = config.runtime.steps_per_dispatch
    else:
      flops = self.flops_per_step(period)
      if not xla_counts_products(par):
        flops = max(flops or 0.0, self.matmul_flops_per_step(period)) or None
      budget = max(1, int(DISPATCH_FLOPS // flops)) if flops else 1
      self.k = max(d for d in range(1, min(period, budget) + 1) if period % d == 0)

  def _abstract_items(self, k: int) -> Any:
    """Items of k steps to lower for: their shapes (pmap: host zeros [devices, k, ...], the
    process-local arrays pmap takes)."""
    if self.par.mode == "pmap":
      return jax.tree.map(lambda x: np.zeros((x.shape[0], k) + x.shape[2:], x.dtype), self._one)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((k,) + x.shape[1:], x.dtype, sharding=x.sharding), self._one)

  def _lower(self, k: int) -> Any:
    if k not in self._lowered:
      t = time.perf_counter()
      self._lowered[k] = self._p_steps.lower(self._state, self.resident, self._abstract_items(k), self.rng)
      self.compile_s += time.perf_counter() - t
    return self._lowered[k]

  def flops_per_step(self, k: int = 1) -> float | None:
    """XLA's count of one step's FLOPs (a scan's body is counted once); None if XLA gives none
    (e.g. pmap over several processes)."""
    try:
      analysis = self._lower(k).cost_analysis()
    except Exception:  # pylint: disable=broad-except
      return None
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None

  def matmul_flops_per_step(self, k: int = 1) -> float:
    """The matrix-product FLOPs of one step of the whole batch, counted from the traced
    program (`experiments.flops`: the same on every platform, unlike XLA's count)."""
    return flops_lib.of(self._p_steps, self._state, self.resident, self._abstract_items(k), self.rng) / k

  def executable(self, k: int) -> Callable[..., Any]:
    """The compiled program of k steps. Under pmap, the pmapped function itself (its compiled
    form wants global shapes; the call takes each process's own), which compiles on its first
    call."""
    if self.par.mode == "pmap":
      return self._p_steps
    if k not in self._compiled:
      lowered = self._lower(k)
      t = time.perf_counter()
      self._compiled[k] = lowered.compile()
      self.compile_s += time.perf_counter() - t
      host_memory.fit(_host_buffer_bytes(self._compiled[k]))
    return self._compiled[k]

  def plan(self, start: int) -> list[tuple[int, int]]:
    return plan(start, self.config.steps, self.k, self.periods, self.config.profile_span or ())

  def compile(self, start: int) -> None:
    """Compiles the programs the dispatches from `start` need."""
    for k in sorted({k for _, k in self.plan(start)}, reverse=True):
      self.executable(k)

  @contextlib.contextmanager
  def spans(self, start: int, chunks: list[tuple[int, int]] | None = None) -> Iterator[Prefetch]:
    """The `Span`s of every dispatch from `start` to --steps (or of `chunks`), prefetched."""
    prefetch = Prefetch(self.feed, self.plan(start) if chunks is None else chunks, self.par.put_items)
    try:
      yield prefetch
    finally:
      prefetch.close()

  def span(self, first: int, k: int) -> Span:
    """One dispatch's span, its items read and placed now (the benchmark's)."""
    return Span(first, k, self.par.put_items(self.feed.items(first, k)))

  def __call__(self, state: Any, span: Span) -> tuple[Any, Any]:
    """Runs the span's k steps in one dispatch: the new state, and metrics [k, ...]."""
    return self.executable(span.k)(state, self.resident, span.items, self.rng)
