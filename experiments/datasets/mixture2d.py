"""The 2D Gaussian mixtures of PacGAN and VEEGAN as a TFDS dataset (generated offline).

    tfds.load("mixture2d/ring")   # 8 Gaussians on the unit circle, std 0.01
    tfds.load("mixture2d/grid")   # 25 Gaussians on {-4, -2, 0, 2, 4}^2, std 0.05

`train` holds PacGAN's 100,000 training points, `test` 2,500 more (the size the papers
score); `y` is each point's mode. The means and the mode metric are in `nets.mixtures`.
"""

import numpy as np
import tensorflow_datasets as tfds

from nets import mixtures

SPLITS = {"train": 100_000, "test": 2_500}


class Mixture2d(tfds.core.GeneratorBasedBuilder):
  """Points of a 2D Gaussian mixture and the index of their mode."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "PacGAN's ring (8 modes, std 0.01) and grid (25 modes, std 0.05)."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"The {name} mixture.")
                     for name in mixtures.MIXTURES]

  def _info(self) -> tfds.core.DatasetInfo:
    means, _ = mixtures.mixture(self.builder_config.name)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "y": tfds.features.ClassLabel(num_classes=len(means)),
        }),
        supervised_keys=("x", "y"),
        disable_shuffling=True,
        citation="Lin, Khetan, Fanti, Oh (2018). PacGAN: the power of two samples in generative adversarial networks.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n) for split, n in SPLITS.items()}

  def _generate_examples(self, split: str, n: int):
    seed = list(SPLITS).index(split)  # fixed per split: the data never changes
    points, modes = mixtures.sample(self.builder_config.name, n, np.random.default_rng([seed, len(split)]))
    for i, (x, y) in enumerate(zip(points, modes)):
      yield i, {"x": x, "y": int(y)}
