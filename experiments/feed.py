"""How training batches reach the compiled steps: held on the devices, or sent from the host.

The training loop runs several steps per dispatch (a `lax.scan` over `k` steps, see
`experiments.dispatch`). A `Feed` gives those steps their batches:
- `resident`: arrays placed on the devices once, for the whole run (maybe none);
- `items(step, k)`: this process's host arrays, shaped [k, rows, ...], that select the
  batches of steps step .. step + k - 1;
- `take(resident, item)`: one step's batch, computed inside the compiled step.

`make` chooses one of three, all giving the very batches `experiments.data` streams (so the
numbers do not depend on the choice):
- `Examples`: a split of labelled examples (or images) of at most
  `--runtime.device_data_mb` is held on the devices; an item is the indices of a batch's
  examples (`data.ExampleOrder`, the tf.data stream's order) and the step gathers them;
- `Windows`: text and audio held in memory are held on the devices as one token array; an item
  is where each window starts (drawn on the host from (seed, step) as `data.text_batches`
  draws them) and the step slices the windows;
- `Streamed`: anything larger, or `--runtime.device_data_mb=0`: tf.data reads the batches
  and an item is the batch itself.

`experiments.dispatch` prepares the items of the coming dispatches in a background thread
and puts them on the devices, so the host never holds up the device.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data
from experiments.config import Config

Items = dict[str, np.ndarray]


class Feed:
  """Training batches as the compiled steps take them (see the module docstring)."""

  kind = ""
  resident: dict[str, np.ndarray] = {}

  def items(self, step: int, k: int) -> Items:
    raise NotImplementedError

  def zeros(self) -> Items:
    """Items of one step shaped and typed like `items(step, 1)`, without reading any data."""
    raise NotImplementedError

  def take(self, resident: dict[str, jax.Array], item: dict[str, jax.Array]) -> dict[str, jax.Array]:
    raise NotImplementedError

  def describe(self) -> str:
    size = sum(v.nbytes for v in self.resident.values()) / 2**20
    return f"training data {self.kind}" + (f" ({size:.1f} MiB on each device)" if self.resident else "")


class Streamed(Feed):
  """Batches read on the host (`data.batches`) and sent with every dispatch."""

  kind = "streamed from the host"

  def __init__(self, config: Config, source: data.Source):
    self._config, self._source = config, source
    self._stream: Iterator[data.Batch] | None = None
    self._next = -1

  def zeros(self) -> Items:
    rows = data.per_process(self._config.batch_size)
    return {key: np.zeros((1, rows) + v.shape[1:], v.dtype) for key, v in self._source.example.items()}

  def items(self, step: int, k: int) -> Items:
    if step != self._next:  # the first call, or a jump: restart the stream at `step`
      self._stream = data.batches(self._config, self._source, step)
    batches = [next(self._stream) for _ in range(k)]
    self._next = step + k
    if k == 1:
      return {key: value[None] for key, value in batches[0].items()}
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

  def take(self, resident, item):
    del resident
    return item


class Examples(Feed):
  """A split held on the devices; each step gathers its examples by index."""

  kind = "held on the devices"

  def __init__(self, config: Config, arrays: dict[str, np.ndarray]):
    self.resident = arrays
    self._order = data.ExampleOrder(config, len(next(iter(arrays.values()))))

  def items(self, step: int, k: int) -> Items:
    return {"index": self._order.indices(step, k)}

  def zeros(self) -> Items:
    return {"index": np.zeros((1, data.per_process(self._order.config.batch_size)), np.int32)}

  def take(self, resident, item):
    # Indices come from data.ExampleOrder, always in bounds: no out-of-bounds fill to compute.
    return {key: value.at[item["index"]].get(mode="promise_in_bounds") for key, value in resident.items()}


class Windows(Feed):
  """Text or audio held on the devices as one token array; each step slices its windows."""

  kind = "held on the devices (windows cut on the device)"

  def __init__(self, config: Config, sequences: data.Text | data.Audio):
    self._config, self._sequences = config, sequences
    self.resident = {"tokens": sequences.flat(config.train_split, config.block_size)}

  def items(self, step: int, k: int) -> Items:
    starts = np.stack([data.train_window_starts(self._config, self._sequences, s) for s in range(step, step + k)])
    rows = data.per_process(self._config.batch_size)
    first = jax.process_index() * rows
    return {"start": starts[:, first:first + rows].astype(np.int32)}

  def zeros(self) -> Items:
    return {"start": np.zeros((1, data.per_process(self._config.batch_size)), np.int32)}

  def take(self, resident, item):
    index = item["start"][:, None] + jnp.arange(self._config.block_size + 1)
    windows = resident["tokens"].at[index].get(mode="promise_in_bounds").astype(jnp.int32)
    return {"x": windows[:, :-1], "y": windows[:, 1:]}


class DeviceBatches:
  """Re-iterable evaluation batches on the devices: the first pass puts each batch there and,
  when they take at most `limit` bytes in all, keeps them for the next passes."""

  def __init__(self, batches: Iterable[data.Batch], put: Callable[[data.Batch], Any], limit: float):
    self._batches, self._put, self._limit = batches, put, limit
    self._kept: list[Any] | None = None

  def __iter__(self) -> Iterator[Any]:
    if self._kept is not None:
      yield from self._kept
      return
    kept: list[Any] | None = []
    size = 0
    for batch in self._batches:
      placed = self._put(batch)
      yield placed
      if kept is not None:
        size += sum(v.nbytes for v in batch.values())
        if size <= self._limit:
          kept.append(placed)
        else:
          kept = None
    self._kept = kept

  def load(self) -> bool:
    """Reads the batches and puts them on the devices now, before the first pass, if they
    fit the limit (stops reading as soon as they do not); returns whether they are kept."""
    if self._kept is None:
      kept, size = [], 0
      for batch in self._batches:
        size += sum(v.nbytes for v in batch.values())
        if size > self._limit:
          return False
        kept.append(self._put(batch))
      self._kept = kept
    return True


def make(config: Config, source: data.Source) -> Feed:
  """The run's feed: on the devices when the training data fits `--runtime.device_data_mb` (and, for
  a split of examples, when the run reads all of it: a short run only reads its batches)."""
  limit = config.runtime.device_data_mb * 2**20
  if source.windows is not None:
    flat = source.windows.flat(config.train_split, config.block_size)
    return Windows(config, source.windows) if flat.nbytes <= limit else Streamed(config, source)
  b = source.builder
  info = b.info.splits[config.fit_split] if b.info.splits else None
  per_example = sum(v.nbytes for v in source.example.values())  # a batch of one
  if (info is None or not data.read_whole(b, config.fit_split) or info.num_examples * per_example > limit
      or info.num_examples > config.steps * config.batch_size):
    return Streamed(config, source)
  return Examples(config, data.read_training(config, b))
