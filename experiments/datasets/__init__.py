"""TFDS builders of our own; importing this package registers them with `tfds.load`."""

from experiments.datasets import char_text, mnist1d, numbers_to_words  # noqa: F401

OFFLINE_DATASETS = ("mnist1d", "char_text", "numbers_to_words")
