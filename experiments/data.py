"""The input pipeline: any TFDS dataset -> per-process numpy batches.

Training batches come from an endless, seeded stream: epoch `e` is the process's shard
shuffled with a seed derived from (seed, e), and the stream is cut into batches. Batch `i`
of a run therefore depends only on (seed, i), so a resumed run starts the stream at the
step it stopped at and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import experiments.datasets  # noqa: F401  (registers our offline builders)
from experiments.config import Config, ConfigError

# Keep TensorFlow off accelerators: JAX owns them.
tf.config.set_visible_devices([], "GPU")

Batch = dict[str, np.ndarray]


def builder(config: Config) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `config.dataset`; a clear error if the name is unknown."""
  data_dir = os.path.expanduser(config.data_dir) if config.data_dir else None
  try:
    b = tfds.builder(config.dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    first_line = str(e).strip().splitlines()[0]
    raise ConfigError(f"unknown dataset --dataset={config.dataset!r} ({first_line}); ours offline: "
                     f"{', '.join(experiments.datasets.OFFLINE_DATASETS)}; or any TFDS catalog name") from None
  for split in (config.train_split, config.eval_split):
    if b.info.splits and split.split("[")[0] not in b.info.splits:
      raise ConfigError(f"dataset {config.dataset!r} has no split {split!r}; it has {list(b.info.splits)}")
  if jax.process_index() == 0:
    b.download_and_prepare()
  return b


def num_classes(b: tfds.core.DatasetBuilder) -> int | None:
  """The number of classes of the label feature, if it is a ClassLabel."""
  keys = b.info.supervised_keys
  if not keys:
    return None
  feature = b.info.features[keys[1]]
  return getattr(feature, "num_classes", None)


def _to_model_inputs(x, y) -> dict[str, tf.Tensor]:
  if x.dtype == tf.uint8:  # images: [0, 255] -> [0, 1]
    x = tf.cast(x, tf.float32) / 255.0
  elif x.dtype.is_floating:
    x = tf.cast(x, tf.float32)
  if y.dtype.is_integer:
    y = tf.cast(y, tf.int32)
  return {"x": x, "y": y}


def _read(b: tfds.core.DatasetBuilder, split: str) -> tuple[tf.data.Dataset, int]:
  """This process's share of `split` as model inputs, and its number of examples."""
  sub = tfds.split_for_jax_process(split, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  options = tf.data.Options()
  options.deterministic = True
  ds = b.as_dataset(split=sub, as_supervised=True, shuffle_files=False,
                    read_config=tfds.ReadConfig(add_tfds_id=False, options=options))
  n = int(ds.cardinality())
  if n < 0:  # unknown (e.g. mock data): count once
    n = int(ds.reduce(0, lambda count, _: count + 1))
  return ds.map(_to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE), n


def per_process(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ConfigError(f"batch size {global_batch} is not divisible by the {jax.process_count()} processes")
  return global_batch // jax.process_count()


def train_batches(config: Config, b: tfds.core.DatasetBuilder, start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches of this process, starting at batch `start_step`."""
  examples, n = _read(b, config.train_split)
  batch = per_process(config.batch_size)
  if n < batch:
    raise ConfigError(f"split {config.train_split!r} has {n} examples on this process, fewer than a batch of {batch}")
  examples = examples.cache()
  first_epoch, offset = divmod(start_step * batch, n)
  seed = config.seed + 1_000_003 * jax.process_index()

  def epoch(e):
    if not config.shuffle:
      return examples
    return examples.shuffle(min(config.shuffle_buffer, n), seed=seed * 7919 + e, reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(offset)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()


# Evaluation splits up to this size (on disk) are kept in memory after the first pass.
EVAL_CACHE_BYTES = 512 * 2**20


class EvalBatches:
  """One pass over the evaluation split per iteration, in padded batches with a 0/1 `mask`.

  The pipeline is built once; small splits are cached in memory after the first pass.
  Every process yields the same number of batches (padding with empty ones), so
  collective evaluation steps line up across processes.
  """

  def __init__(self, config: Config, b: tfds.core.DatasetBuilder, split: str | None = None):
    split = split or config.eval_split
    ds, n = _read(b, split)
    self.batch = per_process(config.eval_batch_size)
    info = b.info.splits[split] if b.info.splits else None
    if info is None or info.num_bytes <= EVAL_CACHE_BYTES:
      ds = ds.cache()
    # Processes' shares differ by at most one example; all run as many batches as the largest.
    total = info.num_examples if info is not None else n * jax.process_count()
    self.num_batches = math.ceil(math.ceil(total / jax.process_count()) / self.batch)
    self._ds = ds.batch(self.batch).prefetch(tf.data.AUTOTUNE)
    self._empty = {k: np.zeros((0,) + tuple(s.shape[1:]), s.dtype.as_numpy_dtype)
                   for k, s in self._ds.element_spec.items()}

  def __iter__(self) -> Iterator[Batch]:
    count = 0
    for count, item in enumerate(self._ds.as_numpy_iterator(), start=1):
      yield _pad(item, self.batch)
    for _ in range(count, self.num_batches):
      yield _pad(self._empty, self.batch)


def _pad(item: Batch, batch: int) -> Batch:
  """Pads a short final batch with zeros; `mask` marks the real examples."""
  size = len(next(iter(item.values())))
  mask = (np.arange(batch) < size).astype(np.float32)
  if size < batch:
    item = {k: np.concatenate([v, np.zeros((batch - size,) + v.shape[1:], v.dtype)]) for k, v in item.items()}
  return {**item, "mask": mask}


def example_batch(b: tfds.core.DatasetBuilder, config: Config) -> Batch:
  """A batch of one example of the training split, for shapes and initialisation."""
  ds, _ = _read(b, config.train_split)
  return next(ds.take(1).batch(1).as_numpy_iterator())
