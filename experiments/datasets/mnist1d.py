"""MNIST-1D (Greydanus 2020) as a TFDS dataset, generated offline by the `mnist1d` package.

`make_dataset(get_dataset_args())` reproduces the published 4000/1000 split exactly, so
no download is needed: `import experiments.datasets; tfds.load("mnist1d")`.

Larger sets come from the same generator (`mnist1d/train_16k`, `train_64k`, `train_256k`,
and `test_12k` for the deep double descent experiment). Their first 4,000 training
examples are the published ones; the rest are chunks of 12,000 examples, each one
`make_dataset` call with its own seed (43, 44, ...) and normalised by that call, as the
package does for every set it makes. So the sets nest: `train_64k`'s first 16,000 examples
are `train_16k`'s training split, and `--train_examples=N` on `train_256k` gives a
learning curve whose training sets grow by adding examples. The test split stays the
published 1,000 except in `test_12k` (12,000 fresh examples, seed 1042).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

CHUNK = 12_000  # generated examples per extra seed
FIRST_EXTRA_SEED = 43  # the published set is seed 42
TEST_SEED = 1042  # fresh test examples (test_12k)


# config name -> (training examples, test examples; 1000: the published test split, more: fresh ones)
SIZES = {
    "published": (4000, 1000),
    "train_16k": (16_000, 1000),
    "train_64k": (64_000, 1000),
    "train_256k": (256_000, 1000),
    "test_12k": (4000, 12_000),
}


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D: 40-sample 1D signals of the ten digits."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "The published split, from mnist1d.data.make_dataset defaults.",
      "1.1.0": "Configs with larger generated sets (train_16k, train_64k, train_256k, test_12k); "
               "the default config is the published split, unchanged.",
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="published", description="The published 4000/1000 split."),
      tfds.core.BuilderConfig(name="train_16k", description="16,000 training examples (the published 4,000 "
                              "first); the published test split."),
      tfds.core.BuilderConfig(name="train_64k", description="64,000 training examples (the published 4,000 "
                              "first); the published test split."),
      tfds.core.BuilderConfig(name="train_256k", description="256,000 training examples (the published 4,000 "
                              "first); the published test split."),
      tfds.core.BuilderConfig(name="test_12k", description="The published 4,000 training examples; 12,000 fresh "
                              "test examples (the deep double descent set-up)."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
            "y": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("x", "y"),
        # Keep the generated order: the paper trains on batches taken in order.
        disable_shuffling=True,
        homepage="https://github.com/greydanus/mnist1d",
        citation="Greydanus, S. (2020). Scaling down deep learning. arXiv:2011.14439.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
    published = make_dataset(get_dataset_args())

    def generated(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
      args = get_dataset_args()
      args.num_samples, args.train_split, args.seed = num, 1.0, seed
      data = make_dataset(args)
      return data["x"], data["y"]

    name = self.builder_config.name
    train_examples, test_examples = SIZES[name]
    train = [(published["x"], published["y"])]
    extra = train_examples - len(published["y"])
    if extra % CHUNK:
      raise ValueError(f"mnist1d/{name}: extra training examples come in chunks of {CHUNK}")
    train += [generated(CHUNK, FIRST_EXTRA_SEED + i) for i in range(extra // CHUNK)]
    test = ((published["x_test"], published["y_test"]) if test_examples == len(published["y_test"])
            else generated(test_examples, TEST_SEED))
    return {
        "train": self._generate_examples(np.concatenate([x for x, _ in train]),
                                         np.concatenate([y for _, y in train])),
        "test": self._generate_examples(*test),
    }

  def _generate_examples(self, xs, ys):
    for i, (x, y) in enumerate(zip(xs, ys)):
      yield i, {"x": np.asarray(x, np.float32), "y": int(y)}
