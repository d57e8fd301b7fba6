"""The 2D mixtures and the mode metric, on hand-made samples."""

import numpy as np
import pytest

from nets import mixtures


def test_mixtures_are_the_papers():
  ring, std = mixtures.mixture("ring")
  assert ring.shape == (8, 2) and std == 0.01
  np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 1.0)
  np.testing.assert_allclose(ring[2], [0.0, 1.0], atol=1e-12)
  grid, std = mixtures.mixture("grid")
  assert grid.shape == (25, 2) and std == 0.05
  assert sorted(set(grid[:, 0])) == [-4, -2, 0, 2, 4] and len({tuple(m) for m in grid}) == 25
  with pytest.raises(ValueError, match="unknown mixture"):
    mixtures.mixture("spiral")


def test_samples_of_the_true_distribution_score_perfectly():
  rng = np.random.default_rng(0)
  for name, modes in (("ring", 8), ("grid", 25)):
    points, labels = mixtures.sample(name, 2500, rng)
    score = mixtures.mode_coverage(points, name)
    assert score["modes"] == modes
    assert score["high_quality"] > 0.98  # 3 std in 2D holds 98.9% of a Gaussian's mass
    assert np.bincount(labels, minlength=modes).min() > 0


def test_hand_made_samples():
  ring, std = mixtures.mixture("ring")
  # Three points on mode 0, one 2.9 std off mode 3, one 3.1 std off mode 5, one at the origin.
  samples = np.array([ring[0], ring[0], ring[0], ring[3] + [2.9 * std, 0], ring[5] + [0, 3.1 * std], [0, 0]])
  score = mixtures.mode_coverage(samples, "ring")
  assert score == {"modes": 2.0, "high_quality": 3 / 6 + 1 / 6}
  collapsed = np.repeat(ring[:1], 2500, axis=0)  # mode collapse: perfect quality, one mode
  assert mixtures.mode_coverage(collapsed, "ring") == {"modes": 1.0, "high_quality": 1.0}
  assert mixtures.mode_coverage(np.zeros((10, 2)), "grid") == {"modes": 1.0, "high_quality": 1.0}  # (0, 0) is a grid mode


def test_tfds_builder(tfds_dir):
  import tensorflow_datasets as tfds
  import experiments.datasets  # noqa: F401  (registers the builder)
  from experiments import data
  builder = data.prepared(lambda: tfds.builder("mixture2d/ring", data_dir=tfds_dir))
  assert builder.info.splits["train"].num_examples == 100_000
  x, y = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1, as_supervised=True))
  assert x.shape == (2500, 2) and x.dtype == np.float32 and y.max() == 7
  assert mixtures.mode_coverage(x, "ring")["modes"] == 8
  means, _ = mixtures.mixture("ring")
  np.testing.assert_array_equal(np.argmin(np.linalg.norm(x[:, None] - means[None], axis=-1), axis=1), y)
  again = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1, as_supervised=True))[0]
  np.testing.assert_array_equal(x, again)
