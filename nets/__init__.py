"""Pure Flax modules for every classic neural-network family, and their objectives.

    import nets
    model = nets.create("cnn", features=(25, 25, 25), kernel_size=(5, 3, 3), num_outputs=10)
    nets.names()  # every registered model

This package imports neither absl nor TensorFlow.
"""

from nets import activations, apply, augment, decoding, gpt2, objectives
from nets.registry import create, get, hparams, names, register

# Importing a family's module registers its models.
from nets import autoencoder, cnn, diffusion, gan, mlp, rnn, transformer, wavenet  # noqa: E402,F401  pylint: disable=g-import-not-at-top

__all__ = ["activations", "decoding", "gpt2", "objectives", "create", "get", "hparams", "names", "register"]
