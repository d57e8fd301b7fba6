"""TFDS builders of our own; importing this package registers them with `tfds.load`."""

from experiments.datasets import mnist1d  # noqa: F401

OFFLINE_DATASETS = ("mnist1d",)
