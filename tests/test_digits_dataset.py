"""The `digits` TFDS builder against scikit-learn's raw 8x8 digits."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from experiments.datasets import digits  # noqa: F401  (registers the builder)


def _arrays(data_dir, split):
  builder = tfds.builder("digits", data_dir=data_dir)
  builder.download_and_prepare()
  return builder, tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("digits")
  builder, train = _arrays(data_dir, "train")
  _, test = _arrays(data_dir, "test")
  return data_dir, builder, train, test


def test_splits_and_features(built):
  _, builder, (x, y), (x_test, y_test) = built
  assert builder.info.splits["train"].num_examples == 1437 and builder.info.splits["test"].num_examples == 360
  assert x.shape == (1437, 8, 8, 1) and x.dtype == np.uint8 and x_test.shape == (360, 8, 8, 1)
  assert builder.info.supervised_keys == ("image", "label") and builder.info.features["label"].num_classes == 10
  assert x.min() == 0 and x.max() == 255
  # Stratified: every class in (nearly) its overall proportion, about 10% each.
  for labels, n in ((y, 1437), (y_test, 360)):
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 0.09 * n and counts.max() <= 0.11 * n, counts


def test_values_are_the_raw_counts_scaled(built):
  _, _, (x, y), (x_test, y_test) = built
  raw = load_digits()
  # The two splits together hold every (image, label) of scikit-learn's data exactly once,
  # with 0..16 mapped to round(v * 255 / 16): 0 -> 0, 8 -> 128, 16 -> 255.
  expected = np.round(raw.images * 255 / 16).astype(np.uint8)
  as_keys = lambda images, labels: collections.Counter(
      (im.tobytes(), int(label)) for im, label in zip(images.reshape(len(images), 64), labels))
  assert as_keys(np.concatenate([x, x_test]), np.concatenate([y, y_test])) == as_keys(expected, raw.target)
  levels = sorted(set(np.unique(np.concatenate([x, x_test]))))
  assert levels[0] == 0 and levels[-1] == 255 and len(levels) == 17 and 128 in levels
  zero, full = raw.images == 0, raw.images == 16
  assert np.all(expected[zero] == 0) and np.all(expected[full] == 255)


def test_deterministic_and_tfds_load(built, tmp_path):
  _, _, (x, y), _ = built
  ds = tfds.load("digits", data_dir=tmp_path, split="train", as_supervised=True)
  x2, y2 = tfds.as_numpy(ds.batch(2000).get_single_element())
  np.testing.assert_array_equal(x, x2)  # a second build, in the same order
  np.testing.assert_array_equal(y, y2)
  first = next(iter(tfds.as_numpy(ds)))
  assert first[0].shape == (8, 8, 1) and first[0].dtype == np.uint8 and 0 <= first[1] < 10
