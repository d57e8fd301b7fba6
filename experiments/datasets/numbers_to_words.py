"""Numbers to words, an offline sequence-to-sequence task as a TFDS dataset.

`x` is an integer in [0, 1,000,000) written in digits, `y` the same number in American
English words ("340012" -> "three hundred forty thousand twelve"), both as character ids
of `VOCAB` followed by EOS and right-padded with PAD. The splits are disjoint: the
permutation `np.random.default_rng(0).permutation(1_000_000)` gives 2,000 `test` numbers,
then 2,000 `validation`, then 100,000 `train`, each in the permutation's order.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

PAD, BOS, EOS = 0, 1, 2
VOCAB = ("<pad>", "<bos>", "<eos>") + tuple(" -0123456789abcdefghijklmnopqrstuvwxyz")
SOURCE_LENGTH = 8  # at most 6 digits, then EOS
TARGET_LENGTH = 65  # the longest words (64 characters, e.g. 373373), then EOS
SPLIT_SIZES = {"test": 2_000, "validation": 2_000, "train": 100_000}  # consecutive slices of the permutation

_IDS = {c: i for i, c in enumerate(VOCAB)}
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _below_thousand(n: int) -> list[str]:
  """The words of 0 <= n < 1000; none for 0."""
  hundreds, rest = divmod(n, 100)
  words = [_ONES[hundreds], "hundred"] if hundreds else []
  if rest >= 20:
    words.append(_TENS[rest // 10] + (f"-{_ONES[rest % 10]}" if rest % 10 else ""))
  elif rest:
    words.append(_ONES[rest])
  return words


def number_to_words(n: int) -> str:
  """0 <= n < 1,000,000 in American English words: no "and", hyphens in 21..99."""
  if not 0 <= n < 1_000_000:
    raise ValueError(f"number_to_words: {n} is outside [0, 1000000)")
  if n == 0:
    return "zero"
  thousands, rest = divmod(n, 1000)
  words = _below_thousand(thousands) + ["thousand"] if thousands else []
  return " ".join(words + _below_thousand(rest))


def encode(text: str) -> list[int]:
  """The ids of the characters of `text`, then EOS."""
  try:
    return [_IDS[c] for c in text] + [EOS]
  except KeyError as e:
    raise ValueError(f"character {e.args[0]!r} is not in VOCAB") from None


def decode(ids) -> str:
  """The characters of `ids` up to the first EOS, skipping PAD and BOS."""
  chars = []
  for i in ids:
    if i == EOS:
      break
    if i not in (PAD, BOS):
      chars.append(VOCAB[i])
  return "".join(chars)


def _padded(text: str, length: int) -> np.ndarray:
  ids = encode(text)
  return np.array(ids + [PAD] * (length - len(ids)), np.int32)


class NumbersToWords(tfds.core.GeneratorBasedBuilder):
  """Integers in digits -> the same integers in English words, as padded character ids."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "2,000 test, 2,000 validation, 100,000 train numbers from default_rng(0)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(SOURCE_LENGTH,), dtype=np.int32),
            "y": tfds.features.Tensor(shape=(TARGET_LENGTH,), dtype=np.int32),
        }),
        supervised_keys=("x", "y"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    numbers = np.random.default_rng(0).permutation(1_000_000)
    splits, start = {}, 0
    for name, size in SPLIT_SIZES.items():
      splits[name] = self._generate_examples(numbers[start:start + size])
      start += size
    return splits

  def _generate_examples(self, numbers):
    for i, n in enumerate(numbers.tolist()):  # keyed by position: the permutation's order is kept
      yield i, {"x": _padded(str(n), SOURCE_LENGTH), "y": _padded(number_to_words(n), TARGET_LENGTH)}
