"""Character-level text from a local file as a TFDS dataset, split like nanoGPT's shakespeare_char.

The features are those of the catalog's `tiny_shakespeare` (`{"text": Text()}`, one example
per split holding the split's whole text): `train` is the first 90% of the characters,
`validation` the last 10%. Each file is its own BuilderConfig, named by the file's stem and
a hash of its content, so different or edited files never share prepared data:

    char_text_builder("path/to/input.txt").download_and_prepare()

Plain `tfds.load("char_text")` reads the shared Tiny Shakespeare copy, `DEFAULT_TEXT_PATH`.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TEXT_PATH = os.path.normpath(os.path.join(_ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt"))
TRAIN_FRACTION = 0.9


def _existing_file(path: str) -> str:
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"char_text: no text file at --text_path={path!r}")
  return path


def read_text(path: str) -> str:
  """The file's characters exactly (UTF-8, line endings kept as they are)."""
  with open(path, encoding="utf-8", newline="") as f:
    return f.read()


def splits(text: str) -> dict[str, str]:
  """nanoGPT's split: the first int(n * 0.9) characters `train`, the rest `validation`."""
  cut = int(len(text) * TRAIN_FRACTION)
  return {"train": text[:cut], "validation": text[cut:]}


class CharTextConfig(tfds.core.BuilderConfig):
  """One text file: `path`; named by the file's stem (as [A-Za-z0-9_]) and the first 10 hex of its sha256."""

  def __init__(self, path: str):
    path = _existing_file(path)
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", os.path.splitext(os.path.basename(path))[0])
    super().__init__(name=f"{stem}_{digest}", version="1.0.0", description=f"The characters of {path}.")
    self.path = path


class CharText(tfds.core.GeneratorBasedBuilder):
  """A text file's first 90% of characters (`train`) and last 10% (`validation`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "nanoGPT's shakespeare_char split: int(n * 0.9) characters for train."}

  def get_default_builder_config(self) -> CharTextConfig:
    # Built on demand, not at import: the shared file may be absent, and its hash names the config.
    return CharTextConfig(DEFAULT_TEXT_PATH)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        supervised_keys=None,
        disable_shuffling=True,
        homepage="https://github.com/karpathy/nanoGPT/tree/master/data/shakespeare_char",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {name: self._generate_examples(part) for name, part in splits(read_text(self.builder_config.path)).items()}

  def _generate_examples(self, text):
    yield 0, {"text": text}


def char_text_builder(path: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The `char_text` builder of the text file at `path` (not yet prepared)."""
  return tfds.builder("char_text", config=CharTextConfig(path), data_dir=data_dir)


def vocabulary(texts: Iterable[str]) -> str:
  """The sorted characters that occur in `texts`: id i is character i."""
  chars = set()
  for text in texts:
    chars.update(text)
  return "".join(sorted(chars))


def encode(text: str, vocab: str) -> np.ndarray:
  """The ids (int32) of the characters of `text` in `vocab`."""
  index = {c: i for i, c in enumerate(vocab)}
  try:
    return np.array([index[c] for c in text], np.int32)
  except KeyError as e:
    raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None


def decode(ids: Iterable[int], vocab: str) -> str:
  return "".join(vocab[i] for i in ids)
