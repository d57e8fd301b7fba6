"""MNIST-1D (Greydanus 2020) as a TFDS dataset, generated offline by the `mnist1d` package.

`make_dataset(get_dataset_args())` reproduces the published 4000/1000 split exactly, so
no download is needed: `import experiments.datasets; tfds.load("mnist1d")`.
"""

import numpy as np
import tensorflow_datasets as tfds


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """The 4000/1000 MNIST-1D split: 40-sample 1D signals of the ten digits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The published split, from mnist1d.data.make_dataset defaults."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
            "y": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("x", "y"),
        # Keep the published order: the paper trains on batches taken in order.
        disable_shuffling=True,
        homepage="https://github.com/greydanus/mnist1d",
        citation="Greydanus, S. (2020). Scaling down deep learning. arXiv:2011.14439.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
    data = make_dataset(get_dataset_args())
    return {
        "train": self._generate_examples(data["x"], data["y"]),
        "test": self._generate_examples(data["x_test"], data["y_test"]),
    }

  def _generate_examples(self, xs, ys):
    for i, (x, y) in enumerate(zip(xs, ys)):
      yield i, {"x": np.asarray(x, np.float32), "y": int(y)}
