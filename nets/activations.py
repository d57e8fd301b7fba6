"""Activation functions chosen by name."""

import math
from typing import Callable

import jax
import jax.numpy as jnp


def gelu_exact(x: jax.Array) -> jax.Array:
  """The exact GELU, x * Phi(x), as PyTorch computes it: 0.5 x (1 + erf(x / sqrt 2)).

  `jax.nn.gelu(x, approximate=False)` uses erfc, which XLA's CPU backend evaluates with two
  branches and an exponential; erf is one rational polynomial, and the two differ by at most
  1e-6 (in the far negative tail, where GELU is ~0).
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * (1 / math.sqrt(2))))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "mish": jax.nn.mish,
    "relu6": jax.nn.relu6,
    "hard_tanh": jax.nn.hard_tanh,
    "identity": lambda x: x,
}


def get(name: str) -> Callable[[jax.Array], jax.Array]:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}") from None
