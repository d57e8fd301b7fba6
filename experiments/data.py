"""The input pipeline: any TFDS dataset -> per-process numpy batches.

Supervised datasets give {"x", "y"} batches. Text datasets (a string "text" feature, like
the catalog's `tiny_shakespeare` and our `char_text`) are held in memory as token ids (their
characters', or with --tokenizer=gpt2:FOLDER GPT-2's BPE tokens) and give random windows of
`block_size` tokens, as nanoGPT samples them: "x" a window and "y" the same window shifted by
one token.

Training batches come from an endless, seeded stream: epoch `e` is the split shuffled with
a seed derived from (seed, e), and the stream is cut into global batches. Batch `i` of a run
therefore depends only on (seed, i), so a resumed run starts the stream at the step it
stopped at and sees exactly the batches an uninterrupted run would have seen.

With several processes, each process yields its own rows of every global batch (process p
of P: rows [p B/P, (p+1) B/P)). Splits up to `WHOLE_SPLIT_BYTES` are read by every process,
which keeps its rows of the global stream: the batches, and so the numbers, do not depend on
the number of processes. Larger splits are sharded: each process reads only its own part of
the files (`tfds.split_for_jax_process`) and shuffles it, so there the order depends on the
process count. Text and audio windows are drawn for the global batch from (seed, step) and
sliced, so they never depend on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import sys
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import experiments.datasets  # registers our offline builders
from experiments.config import Config, ConfigError
from experiments.datasets import char_text, numbers_to_words

# Keep TensorFlow off accelerators: JAX owns them.
tf.config.set_visible_devices([], "GPU")
if not sys.stderr.isatty():  # progress bars are escape codes in a log file
  tfds.disable_progress_bar()
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its retries: one line says why (prepared)

Batch = dict[str, np.ndarray]

# Catalog datasets whose uint8 images hold 0/1 values rather than 0..255.
BINARY_IMAGES = ("binarized_mnist",)


def builder(config: Config) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `config.dataset`; a clear error if the name is unknown.

  Process 0 prepares the data; the other processes of a multi-process run wait for it, so
  their TFDS data directory must be the same files (one machine, or a shared file system).
  """
  b = _builder(config)
  _check_splits(b, config)  # before preparing when the splits are known (catalog datasets)
  if jax.process_index() == 0:
    b = prepared(lambda: _builder(config))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"prepared {config.dataset}")
    if jax.process_index() != 0:  # read the prepared files afresh
      b = _builder(config)
  _check_splits(b, config)
  return b


def prepared(make: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  """`make()`'s builder, its data prepared. Processes that start together (a local sweep,
  parallel tests) prepare a dataset once: one holds a file lock while it prepares, and the
  others then make their builder afresh from the prepared files."""
  with _prepare_lock(make()):
    b = make()
    # A download that fails is tried twice more, not five times with growing pauses: offline, a
    # catalog dataset that is not prepared fails in seconds instead of minutes.
    from tensorflow_datasets.core.download import downloader  # pylint: disable=import-outside-toplevel
    downloader.MAX_RETRIES = min(downloader.MAX_RETRIES, 2)
    try:
      b.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  (no network, a host down...)
      if b.name in {n.split("/")[0] for n in experiments.datasets.OFFLINE_DATASETS} or b.is_prepared():
        raise
      root = os.path.dirname(os.path.dirname(os.fspath(b.data_dir)))
      reasons = re.findall(r"\[Errno -?\d+\] [^'\")]+", str(e))  # the operating system's reason, if any
      why = reasons[-1] if reasons else " ".join(str(e).split())[:160]
      raise ConfigError(f"--dataset={b.name} is not prepared in {root} and could not be downloaded "
                        f"({type(e).__name__}: {why}); prepare it where there is internet (tfds build {b.name} "
                        "--data_dir=DIR) and pass --data_dir=DIR") from None
  return b


@contextlib.contextmanager
def _prepare_lock(b: tfds.core.DatasetBuilder):
  """Holds an exclusive lock on a file beside the dataset's folder (local folders only)."""
  path = os.fspath(b.data_dir).rstrip("/")
  if "://" in path or path.startswith(os.path.dirname(tfds.__file__)):  # gs://; TFDS's mock data
    yield
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path + ".lock", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  except OSError:  # a read-only folder: someone else prepared it
    yield
    return
  with f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _builder(config: Config) -> tfds.core.DatasetBuilder:
  data_dir = os.path.expanduser(config.data_dir) if config.data_dir else None
  try:
    if config.dataset == "char_text":
      return char_text.char_text_builder(config.text_path or char_text.DEFAULT_TEXT_PATH, data_dir=data_dir)
    return tfds.builder(config.dataset, data_dir=data_dir)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  except tfds.core.registered.DatasetNotFoundError as e:
    first_line = str(e).strip().splitlines()[0]
    raise ConfigError(f"unknown dataset --dataset={config.dataset!r} ({first_line}); ours offline: "
                     f"{', '.join(experiments.datasets.OFFLINE_DATASETS)}; or any TFDS catalog name") from None


def _check_splits(b: tfds.core.DatasetBuilder, config: Config) -> None:
  for split in (config.train_split, config.eval_split):
    if split and b.info.splits and split.split("[")[0] not in b.info.splits:
      raise ConfigError(f"dataset {config.dataset!r} has no split {split!r}; it has {list(b.info.splits)}")
  if config.train_examples and b.info.splits:
    n = b.info.splits[config.train_split].num_examples
    kept = n - (b.info.splits[config.validation_split].num_examples if config.validation_split else 0)
    if config.train_examples > kept:
      raise ConfigError(f"--train_examples={config.train_examples} exceeds the {kept} examples of "
                        f"--train_split={config.train_split}" + (" less the validation split" if kept < n else ""))


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


def _read(b: tfds.core.DatasetBuilder, split: str, whole: bool = False) -> tuple[tf.data.Dataset, int]:
  """This process's share of `split` (`whole`: all of it) as model inputs, and its number of examples."""
  sub = split if whole else tfds.split_for_jax_process(split, process_index=jax.process_index(),
                                                       process_count=jax.process_count())
  options = tf.data.Options()
  options.deterministic = True
  supervised = bool(b.info.supervised_keys)
  ds = b.as_dataset(split=sub, as_supervised=supervised, shuffle_files=False,
                    read_config=tfds.ReadConfig(add_tfds_id=False, options=options))
  if not supervised:  # unlabelled images (e.g. binarized_mnist): the image, and label 0
    key = _image_key(b)
    if b.name in BINARY_IMAGES:  # stored as 0/1 bytes: keep them 0/1, not /255
      ds = ds.map(lambda ex: (tf.cast(ex[key] > 0, tf.float32), tf.constant(0, tf.int32)))
    else:
      ds = ds.map(lambda ex: (ex[key], tf.constant(0, tf.int32)))
  n = int(ds.cardinality())
  if n < 0:  # unknown (e.g. mock data): count once
    n = int(ds.reduce(0, lambda count, _: count + 1))
  return ds.map(_to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE), n


def _image_key(b: tfds.core.DatasetBuilder) -> str:
  """The image feature of a dataset without supervised keys."""
  for key, feature in b.info.features.items():
    if isinstance(feature, tfds.features.Image):
      return key
  raise ConfigError(f"dataset {b.name!r} has neither supervised keys nor an image feature; "
                    f"its features are {list(b.info.features)}")


def per_process(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ConfigError(f"batch size {global_batch} is not divisible by the {jax.process_count()} processes")
  return global_batch // jax.process_count()


# Training splits up to this size (on disk) are read whole by every process (see the docstring).
WHOLE_SPLIT_BYTES = 512 * 2**20


def read_whole(b: tfds.core.DatasetBuilder, split: str) -> bool:
  """Whether every process reads all of `split` (see the module docstring)."""
  info = b.info.splits[split] if b.info.splits else None
  return jax.process_count() == 1 or info is None or info.num_bytes <= WHOLE_SPLIT_BYTES


def read_split(b: tfds.core.DatasetBuilder, split: str) -> Batch:
  """All of `split` as model inputs, one array per feature, in the split's order."""
  ds, n = _read(b, split, whole=True)
  return next(ds.batch(n).as_numpy_iterator())


def label_noise(config: Config, b: tfds.core.DatasetBuilder, n: int) -> tuple[np.ndarray, np.ndarray]:
  """--label_noise of the training split's `n` examples: which are replaced (exactly
  round(fraction x n) of them, chosen by --seed) and the uniformly random class each is
  given (the same for every process and feed)."""
  classes = num_classes(b)  # (load() has refused --label_noise for data without classes)
  rng = np.random.default_rng([config.seed, 0x1abe1])
  replaced = np.zeros(n, bool)
  replaced[rng.permutation(n)[:round(config.label_noise * n)]] = True
  return replaced, rng.integers(0, classes, n).astype(np.int32)


def read_training(config: Config, b: tfds.core.DatasetBuilder) -> Batch:
  """All of the training examples (--label_noise applied), in the split's order."""
  examples = read_split(b, config.fit_split)
  if config.label_noise:
    replaced, noise = label_noise(config, b, len(examples["y"]))
    examples["y"] = np.where(replaced, noise, examples["y"]).astype(examples["y"].dtype)
  return examples


def _with_label_noise(examples: tf.data.Dataset, config: Config, b: tfds.core.DatasetBuilder,
                      n: int) -> tf.data.Dataset:
  """The whole training split `examples` (n of them) with the labels --label_noise gives them."""
  replaced, noise = (tf.constant(a) for a in label_noise(config, b, n))
  return examples.enumerate().map(
      lambda i, ex: {**ex, "y": tf.where(replaced[i], tf.cast(noise[i], ex["y"].dtype), ex["y"])})


def train_batches(config: Config, b: tfds.core.DatasetBuilder, start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches of this process (its rows of each global batch), starting at
  batch `start_step`."""
  whole = read_whole(b, config.fit_split)
  examples, n = _read(b, config.fit_split, whole)
  if config.label_noise:
    if not whole:
      raise ConfigError(f"--label_noise needs a training split every process reads whole (at most "
                        f"{WHOLE_SPLIT_BYTES // 2**20} MiB); {config.fit_split} is larger")
    examples = _with_label_noise(examples, config, b, n)
  rows = per_process(config.batch_size)
  batch = config.batch_size if whole else rows  # the batches this process's stream is cut into
  if n < batch:
    raise ConfigError(f"split {config.fit_split!r} has {n} examples on this process, fewer than a batch of {batch}")
  examples = examples.cache()
  first_epoch, offset = divmod(start_step * batch, n)
  seed = config.seed if whole else config.seed + 1_000_003 * jax.process_index()

  def epoch(e):
    return _shuffled(examples, config, n, seed, e)

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(offset)
  ds = ds.batch(batch, drop_remainder=True)
  if whole and jax.process_count() > 1:
    first = jax.process_index() * rows
    ds = ds.map(lambda ex: {k: v[first:first + rows] for k, v in ex.items()})
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _shuffled(ds: tf.data.Dataset, config: Config, n: int, seed: int, e: int) -> tf.data.Dataset:
  """Epoch `e` of the `n` elements of `ds`: shuffled with a seed of (seed, e), or in order."""
  if not config.shuffle:
    return ds
  return ds.shuffle(min(config.shuffle_buffer, n), seed=seed * 7919 + e, reshuffle_each_iteration=False)


class ExampleOrder:
  """Which examples make up each training batch, as indices into the split: the same stream
  as `train_batches` (the same seeded epoch shuffles, applied to 0..n-1 instead of the
  examples), for a split held in memory (read whole by every process). Indices are read an
  epoch at a time; asking for an earlier or a later step restarts the stream."""

  def __init__(self, config: Config, n: int):
    if n < config.batch_size:
      raise ConfigError(f"split {config.fit_split!r} has {n} examples, fewer than a batch of {config.batch_size}")
    self.config, self.n = config, n
    self._position = -1  # the stream position of self._buffer[0]
    self._buffer = np.zeros(0, np.int32)
    self._stream: Iterator[np.ndarray] | None = None

  def _start(self, position: int) -> None:
    first_epoch, offset = divmod(position, self.n)

    def epoch(e):  # one element: the whole epoch's order (tf.data's per-element cost is paid once)
      return _shuffled(tf.data.Dataset.range(self.n), self.config, self.n, self.config.seed, e).batch(self.n)

    # One tf.data thread, no autotuning: a third less CPU per index, left to the steps.
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).prefetch(1).with_options(options)
    self._stream = stream.as_numpy_iterator()
    self._position, self._buffer = position, next(self._stream)[offset:].astype(np.int32)

  def _read(self, position: int, count: int) -> np.ndarray:
    """Stream positions position .. position + count - 1."""
    if not self.config.shuffle:  # epochs in order: no need for tf.data
      return ((position + np.arange(count)) % self.n).astype(np.int32)
    if not self._position <= position <= self._position + len(self._buffer):
      self._start(position)
    self._buffer = self._buffer[position - self._position:]
    self._position = position
    while len(self._buffer) < count:
      self._buffer = np.concatenate([self._buffer, next(self._stream).astype(np.int32)])
    return self._buffer[:count]

  def indices(self, step: int, k: int) -> np.ndarray:
    """[k, rows]: this process's rows of global batches step .. step + k - 1."""
    batch = self.config.batch_size
    out = self._read(step * batch, k * batch).reshape(k, batch)
    rows = per_process(batch)
    first = jax.process_index() * rows
    return out[:, first:first + rows]


# Evaluation splits up to this size (on disk) are kept in memory after the first pass.
EVAL_CACHE_BYTES = 512 * 2**20


class EvalBatches:
  """One pass over the evaluation split per iteration, in padded batches with a 0/1 `mask`.

  The pipeline is built once; small splits are cached in memory after the first pass.
  Every process yields the same number of batches (padding with empty ones), so
  collective evaluation steps line up across processes.
  """

  def __init__(self, config: Config, b: tfds.core.DatasetBuilder, split: str | None = None):
    split = self.split = split or config.eval_split
    if split == config.fit_split and config.label_noise:  # the training examples, as trained on
      ds, n = _read(b, split, whole=True)
      ds = _with_label_noise(ds, config, b, n).shard(jax.process_count(), jax.process_index())
      n = len(range(jax.process_index(), n, jax.process_count()))
    else:
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
  ds, _ = _read(b, config.fit_split)
  return next(ds.take(1).batch(1).as_numpy_iterator())


def is_text(b: tfds.core.DatasetBuilder) -> bool:
  """Whether the dataset is raw text: a string "text" feature and no supervised keys."""
  return not b.info.supervised_keys and "text" in b.info.features and isinstance(b.info.features["text"], tfds.features.Text)


class Tokenizer(NamedTuple):
  """Text <-> token ids."""

  size: int
  encode: Callable[[str], np.ndarray]
  decode: Callable[[Sequence[int]], str]


class Text:
  """A text dataset held in memory: its tokenizer and each split as token ids.

  The tokenizer is given (`text_tokenizer`: --tokenizer=gpt2:FOLDER) or, by default, the
  text's characters: the sorted set of characters over all splits (nanoGPT's: 65 for Tiny
  Shakespeare). Every process holds the whole text and draws its own windows. `read` reads
  a builder's splits.
  """

  def __init__(self, texts: dict[str, str], tokenizer: Tokenizer | None = None):
    if tokenizer is None:
      vocab = char_text.vocabulary(texts.values())
      tokenizer = Tokenizer(len(vocab), lambda text: char_text.encode(text, vocab),
                            lambda ids: char_text.decode(ids, vocab))
    self.tokenizer = tokenizer
    self.tokens = {}
    for split, text in texts.items():
      try:
        self.tokens[split] = np.asarray(tokenizer.encode(text), np.int32)
      except ValueError as e:
        raise ConfigError(f"split {split!r}: {e}") from None

  @classmethod
  def read(cls, b: tfds.core.DatasetBuilder, splits: Sequence[str] = (), tokenizer: Tokenizer | None = None) -> "Text":
    """The text of each of the builder's splits; `splits` are read when the builder does not
    list its splits (e.g. under mock data)."""
    texts = {}
    for split in list(b.info.splits) or splits:  # every split when they are known
      ds = b.as_dataset(split=split, shuffle_files=False)
      texts[split] = "".join(ex["text"].decode("utf-8") for ex in tfds.as_numpy(ds))
    return cls(texts, tokenizer)

  def split(self, name: str, block_size: int) -> np.ndarray:
    tokens = self.tokens[name]
    if len(tokens) <= block_size:
      raise ConfigError(f"split {name!r} has {len(tokens)} tokens, too few for --block_size={block_size}")
    return tokens

  def flat(self, split: str, block_size: int) -> np.ndarray:
    """The split's tokens, which `starts` index."""
    return self.split(split, block_size)

  def starts(self, split: str, rng: np.random.Generator, batch: int, block_size: int) -> np.ndarray:
    """Where `batch` random windows of `block_size` + 1 tokens start in `flat(split)`."""
    return rng.integers(0, len(self.split(split, block_size)) - block_size, size=batch)

  def windows(self, split: str, rng: np.random.Generator, batch: int, block_size: int) -> Batch:
    return cut_windows(self.flat(split, block_size), self.starts(split, rng, batch, block_size), block_size)


def _audio_key(b: tfds.core.DatasetBuilder) -> str | None:
  """The name of the dataset's audio feature, if it has one."""
  for key, feature in b.info.features.items():
    if isinstance(feature, tfds.features.Audio):
      return key
  return None


def is_audio(b: tfds.core.DatasetBuilder) -> bool:
  return _audio_key(b) is not None


class Audio:
  """An audio dataset held in memory as 8-bit mu-law ids (WaveNet's 256 levels), one array per clip.

  Training and evaluation windows lie inside one clip (never across two); a clip is drawn
  with probability proportional to the windows it holds. Integer audio is scaled to [-1, 1]
  by its dtype's range; float audio is taken as it is.
  """

  def __init__(self, b: tfds.core.DatasetBuilder, splits: Sequence[str] = ()):
    from nets import wavenet  # pylint: disable=g-import-not-at-top
    key = _audio_key(b)
    feature = b.info.features[key]
    self.sample_rate = int(feature.sample_rate or 16_000)
    self.levels = 256
    self.clips: dict[str, list[np.ndarray]] = {}
    self._eligible_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in list(b.info.splits) or splits:
      ds = b.as_dataset(split=split, shuffle_files=False)
      self.clips[split] = [wavenet.mu_law_encode(_to_float(ex[key]), self.levels).astype(np.int32)
                           for ex in tfds.as_numpy(ds)]
    self.tokenizer = Tokenizer(self.levels, lambda audio: wavenet.mu_law_encode(np.asarray(audio), self.levels),
                               lambda ids: wavenet.mu_law_decode(np.asarray(ids), self.levels))

  def _eligible(self, split: str, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clips longer than a window, end to end as uint8 mu-law ids; where each starts in
    them; how many windows each holds (computed once)."""
    key = (split, block_size)
    if key not in self._eligible_cache:
      clips = [c for c in self.clips[split] if len(c) > block_size]
      if not clips:
        raise ConfigError(f"split {split!r} has no clip longer than --block_size={block_size} samples")
      offsets = np.cumsum([0] + [len(c) for c in clips[:-1]])
      self._eligible_cache[key] = (np.concatenate(clips).astype(np.uint8), offsets,
                                   np.array([len(c) - block_size for c in clips], np.float64))
    return self._eligible_cache[key]

  def flat(self, split: str, block_size: int) -> np.ndarray:
    """The clips of the split that hold a window, end to end, which `starts` index."""
    return self._eligible(split, block_size)[0]

  def starts(self, split: str, rng: np.random.Generator, batch: int, block_size: int) -> np.ndarray:
    """Where `batch` random windows of `block_size` + 1 samples start in `flat(split)`: a
    clip drawn in proportion to its windows, then a window inside it."""
    _, offsets, counts = self._eligible(split, block_size)
    which = rng.choice(len(counts), size=batch, p=counts / counts.sum())
    return offsets[which] + (rng.random(batch) * counts[which]).astype(np.int64)

  def windows(self, split: str, rng: np.random.Generator, batch: int, block_size: int) -> Batch:
    return cut_windows(self.flat(split, block_size), self.starts(split, rng, batch, block_size), block_size)


def _to_float(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.ndim > 1:  # several channels: their mean
    audio = audio.mean(axis=-1)
  if np.issubdtype(audio.dtype, np.integer):
    return audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
  return audio.astype(np.float32)


def text_tokenizer(config: Config) -> Tokenizer | None:
  """--tokenizer's tokenizer of text datasets; None for the text's own characters (char)."""
  if config.tokenizer == "char":
    return None
  from nets import gpt2  # pylint: disable=g-import-not-at-top
  try:
    bpe = gpt2.tokenizer(config.tokenizer.partition(":")[2])
  except ValueError as e:
    raise ConfigError(f"--tokenizer={config.tokenizer}: {e}") from None
  return Tokenizer(bpe.size, lambda text: np.asarray(bpe.encode(text), np.int32), bpe.decode)


def tokenizer(b: tfds.core.DatasetBuilder, text: Text | None = None) -> Tokenizer | None:
  """The dataset's tokenizer, if its examples are token ids (text, numbers_to_words)."""
  if text is not None:
    return text.tokenizer
  if b.name == "numbers_to_words":
    return Tokenizer(len(numbers_to_words.VOCAB), lambda s: np.asarray(numbers_to_words.encode(s), np.int32),
                     numbers_to_words.decode)
  return None


def cut_windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> Batch:
  """The windows of `block_size` tokens at `starts` (x) and the same shifted by one (y), as int32."""
  index = np.asarray(starts)[:, None] + np.arange(block_size)
  return {"x": tokens[index].astype(np.int32), "y": tokens[index + 1].astype(np.int32)}


def _own_rows(batch: Batch, global_batch: int) -> Batch:
  """This process's rows of a global batch."""
  rows = per_process(global_batch)
  first = jax.process_index() * rows
  return {k: v[first:first + rows] for k, v in batch.items()}


def train_window_starts(config: Config, text: Text | Audio, step: int) -> np.ndarray:
  """Where the windows of global training batch `step` start in `text.flat(train split)`:
  a function of (seed, step) only."""
  rng = np.random.default_rng([config.seed, 0, step])  # the 0 names the stream of training windows
  return text.starts(config.train_split, rng, config.batch_size, config.block_size)


def text_batches(config: Config, text: Text | Audio, start_step: int = 0) -> Iterator[Batch]:
  """Endless random windows from the training split (text or audio); global batch i depends
  only on (seed, i), and each process keeps its rows."""
  flat = text.flat(config.train_split, config.block_size)  # fails early if no window fits
  step = start_step
  while True:
    windows = cut_windows(flat, train_window_starts(config, text, step), config.block_size)
    yield _own_rows(windows, config.batch_size)
    step += 1


def text_eval_batches(config: Config, text: Text | Audio, final: bool = False) -> list[Batch]:
  """`config.eval_batches` (`final`: `config.final_eval_batches`, if set) batches of fixed
  random windows of the evaluation split (the same every evaluation, for every seed and
  process count; fewer batches are the first ones of more), with an all-ones `mask`."""
  batch = config.eval_batch_size
  count = config.final_eval_batches if final and config.final_eval_batches else config.eval_batches
  rng = np.random.default_rng([1234, 0])
  return [_own_rows({**text.windows(config.eval_split, rng, batch, config.block_size),
                     "mask": np.ones(batch, np.float32)}, batch)
          for _ in range(count)]


class Source(NamedTuple):
  """A run's data, once loaded: the builder, the text (text datasets) or audio (audio
  datasets) held in memory, a one-example batch for shapes, the tokenizer (token datasets)
  and the number of classes (if labelled)."""

  builder: tfds.core.DatasetBuilder
  text: Text | None
  example: Batch
  tokenizer: Tokenizer | None
  num_classes: int | None
  audio: Audio | None = None

  @property
  def windows(self) -> Text | Audio | None:
    """The in-memory sequences that training windows are cut from, if any."""
    return self.text if self.text is not None else self.audio


def load(config: Config) -> Source:
  if config.tokenizer != "char" and not is_text(_builder(config)):  # before the data are prepared
    raise ConfigError(f"--tokenizer={config.tokenizer} tokenises text datasets; --dataset={config.dataset} is not "
                      "text (leave --tokenizer=char)")
  b = builder(config)
  splits = (config.train_split, config.eval_split)
  if config.label_noise and not num_classes(b):
    raise ConfigError(f"--label_noise needs class labels; --dataset={config.dataset} has none")
  if (config.validation_fraction or config.train_examples) and (is_text(b) or is_audio(b)):
    raise ConfigError(f"--validation_fraction and --train_examples slice datasets of examples; {config.dataset} is "
                      "a text or audio dataset: choose its splits with --train_split and --eval_split")
  if config.eval_train and (is_text(b) or is_audio(b)):
    raise ConfigError(f"--eval_train evaluates datasets of examples; {config.dataset} is a text or audio dataset "
                      "(its training loss is logged as it trains)")
  text = Text.read(b, splits, text_tokenizer(config)) if is_text(b) else None
  audio = Audio(b, splits) if text is None and is_audio(b) else None
  if text is not None or audio is not None:
    return sequence_source(config, b, text, audio)
  return Source(b, None, example_batch(b, config), tokenizer(b), num_classes(b))


def sequence_source(config: Config, b: tfds.core.DatasetBuilder | None, text: Text | None,
                    audio: Audio | None = None) -> Source:
  """The Source of sequences held in memory (text or audio)."""
  sequences = text if text is not None else audio
  example = {k: v[:1] for k, v in next(text_batches(config, sequences)).items()}
  return Source(b, text, example, sequences.tokenizer, None, audio)


def batches(config: Config, source: Source, start_step: int = 0) -> Iterator[Batch]:
  """This process's training batches from batch `start_step` on."""
  if source.windows is not None:
    return text_batches(config, source.windows, start_step)
  return train_batches(config, source.builder, start_step)


def eval_batches(config: Config, source: Source, final: bool = False) -> Iterable[Batch]:
  """This process's evaluation batches (re-iterable), with a 0/1 `mask`; `final`: those of
  the evaluation after the last step (more windows with --final_eval_batches)."""
  if source.windows is not None:
    return text_eval_batches(config, source.windows, final)
  return EvalBatches(config, source.builder)
