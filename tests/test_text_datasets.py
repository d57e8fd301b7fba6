"""Our text builders (`char_text`, `numbers_to_words`) and the catalog's `tiny_shakespeare` format."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import experiments.datasets  # noqa: F401
from experiments import data
from experiments.datasets import char_text, numbers_to_words
from experiments.datasets.char_text import DEFAULT_TEXT_PATH, char_text_builder
from experiments.datasets.numbers_to_words import EOS, PAD, SOURCE_LENGTH, TARGET_LENGTH, number_to_words


def _texts(b: tfds.core.DatasetBuilder) -> dict[str, str]:
  """Each split's one text, decoded."""
  out = {}
  for split in ("train", "validation"):
    (text,) = tfds.as_numpy(b.as_dataset(split=split, batch_size=-1))["text"]
    out[split] = text.decode("utf-8")
  return out


@pytest.fixture(scope="module")
def shakespeare(tfds_dir):
  if not os.path.isfile(DEFAULT_TEXT_PATH):
    pytest.skip(f"no Tiny Shakespeare at {DEFAULT_TEXT_PATH}")
  return data.prepared(lambda: char_text_builder(DEFAULT_TEXT_PATH, data_dir=tfds_dir))


def test_char_text_is_nanogpts_shakespeare_char_split(shakespeare):
  texts = _texts(shakespeare)
  assert len(texts["train"]) == 1_003_854 and len(texts["validation"]) == 111_540
  assert texts["train"] + texts["validation"] == char_text.read_text(DEFAULT_TEXT_PATH)
  vocab = char_text.vocabulary(texts.values())
  assert len(vocab) == 65 and vocab == "".join(sorted(vocab))
  ids = char_text.encode(texts["validation"], vocab)
  assert ids.dtype == np.int32 and ids.max() < 65
  assert char_text.decode(ids, vocab) == texts["validation"]
  with pytest.raises(ValueError, match="'é' is not in the vocabulary"):
    char_text.encode("café", vocab)


def test_tfds_load_reads_the_default_config(shakespeare, tfds_dir):
  ds = tfds.load("char_text", split="validation", data_dir=tfds_dir)
  (example,) = list(tfds.as_numpy(ds))
  assert len(example["text"].decode("utf-8")) == 111_540
  assert tfds.builder("char_text", data_dir=tfds_dir).builder_config.name == shakespeare.builder_config.name


def test_char_text_splits_a_file_by_characters(tmp_path, tfds_dir):
  text = "".join(f"{i}: çà va, 東京 ☃\n" for i in range(10))  # non-ASCII: characters are not bytes
  path = tmp_path / "small.txt"
  path.write_text(text, encoding="utf-8")
  b = data.prepared(lambda: char_text_builder(str(path), data_dir=tfds_dir))
  cut = int(len(text) * 0.9)
  assert _texts(b) == {"train": text[:cut], "validation": text[cut:]}
  assert b.builder_config.name.startswith("small_")

  path.write_text(text + "more", encoding="utf-8")  # edited: a new config, prepared afresh
  assert char_text_builder(str(path), data_dir=tfds_dir).builder_config.name != b.builder_config.name


def test_char_text_missing_file_names_the_flag(tmp_path):
  missing = str(tmp_path / "no_such.txt")
  with pytest.raises(FileNotFoundError, match="--text_path") as e:
    char_text_builder(missing)
  assert missing in str(e.value)


@pytest.mark.parametrize("n,words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (21, "twenty-one"), (99, "ninety-nine"),
    (100, "one hundred"), (105, "one hundred five"), (110, "one hundred ten"), (1000, "one thousand"),
    (1001, "one thousand one"), (12345, "twelve thousand three hundred forty-five"),
    (340012, "three hundred forty thousand twelve"), (500000, "five hundred thousand"),
    (999999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
])
def test_number_to_words(n, words):
  assert number_to_words(n) == words


def test_number_to_words_range_and_longest():
  for n in (-1, 1_000_000):
    with pytest.raises(ValueError):
      number_to_words(n)
  # TARGET_LENGTH is the longest words over the whole range, plus EOS.
  assert max(len(number_to_words(n)) for n in range(1_000_000)) + 1 == TARGET_LENGTH


def test_numbers_to_words_encode_decode():
  ids = numbers_to_words.encode("forty-two 42")
  assert ids[-1] == EOS and numbers_to_words.decode(ids) == "forty-two 42"
  assert numbers_to_words.decode([numbers_to_words.BOS] + ids + [PAD, 5]) == "forty-two 42"
  with pytest.raises(ValueError, match="'X' is not in VOCAB"):
    numbers_to_words.encode("X")


@pytest.fixture(scope="module")
def numbers(tfds_dir):
  b = data.prepared(lambda: tfds.builder("numbers_to_words", data_dir=tfds_dir))
  return {split: tfds.as_numpy(b.as_dataset(split=split, batch_size=-1, as_supervised=True))
          for split in ("train", "validation", "test")}


def test_numbers_to_words_splits(numbers):
  assert {split: len(x) for split, (x, _) in numbers.items()} == {"train": 100_000, "validation": 2_000, "test": 2_000}
  permutation = np.random.default_rng(0).permutation(1_000_000)
  ints = {split: np.array([int(numbers_to_words.decode(row)) for row in x]) for split, (x, _) in numbers.items()}
  np.testing.assert_array_equal(ints["test"], permutation[:2_000])  # the permutation, in order
  np.testing.assert_array_equal(ints["validation"], permutation[2_000:4_000])
  np.testing.assert_array_equal(ints["train"], permutation[4_000:104_000])
  assert len(np.unique(np.concatenate(list(ints.values())))) == 104_000  # disjoint


def test_numbers_to_words_examples(numbers):
  x, y = numbers["validation"]
  assert x.shape == (2_000, SOURCE_LENGTH) and y.shape == (2_000, TARGET_LENGTH) and x.dtype == y.dtype == np.int32
  for xi, yi in zip(x, y):
    n = numbers_to_words.decode(xi)
    assert numbers_to_words.decode(yi) == number_to_words(int(n))
    for row, text in ((xi, n), (yi, number_to_words(int(n)))):  # text, EOS, then only padding
      assert row[len(text)] == EOS and not row[len(text) + 1:].any()


def test_catalog_tiny_shakespeare_has_our_features(shakespeare):
  with tfds.testing.mock_data(num_examples=1):
    ds = tfds.load("tiny_shakespeare", split="train")
    (example,) = list(ds)
  assert ds.element_spec == shakespeare.as_dataset(split="train").element_spec == {
      "text": tf.TensorSpec(shape=(), dtype=tf.string)}
  assert isinstance(example["text"].numpy(), bytes)
