"""scikit-learn's 8x8 handwritten digits (UCI optical recognition of handwritten digits) as a TFDS dataset.

The 1,797 images ship with scikit-learn (`sklearn.datasets.load_digits`), so nothing is
downloaded: `import experiments.datasets; tfds.load("digits")`. Each image's 4x4-block counts
0..16 are scaled to uint8 as round(v * 255 / 16) (0 -> 0, 16 -> 255). The split is
`train_test_split(test_size=360, random_state=0, stratify=labels)`: 1,437 training and 360 test
images, each class in the same proportion in both, in that function's (fixed) order.
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_SIZE = 360


def load() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: (images [N, 8, 8, 1] uint8, labels [N] int64)} of the fixed train/test split."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train, test = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE, random_state=0, stratify=labels)
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


class Digits(tfds.core.GeneratorBasedBuilder):
  """8x8 grey-level images of the digits 0-9 and their labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "scikit-learn's load_digits, values scaled to 0..255, a stratified 1437/360 split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        # Keep train_test_split's order: the data are the same in every build.
        disable_shuffling=True,
        homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
        citation="Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten Digits. "
        "UCI Machine Learning Repository. https://doi.org/10.24432/C50P49",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(images, labels) for split, (images, labels) in load().items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}
