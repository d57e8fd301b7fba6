"""TFDS builders of our own; importing this package registers them with `tfds.load`."""

from experiments.datasets import char_text, digits, mixture2d, mnist1d, numbers_to_words, tones  # noqa: F401

OFFLINE_DATASETS = ("mnist1d", "digits", "char_text", "numbers_to_words", "mixture2d/ring", "mixture2d/grid", "tones")
