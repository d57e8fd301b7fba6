"""Weight initialisation schemes chosen by name, for Dense and convolution layers.

- "lecun": Flax's default: LeCun-normal kernels, zero biases.
- "torch": PyTorch's default for nn.Linear/nn.Conv: kernel and bias both drawn from
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Use it to reproduce results trained in PyTorch.
"""

import math

import jax
import jax.numpy as jnp

INITS = ("lecun", "torch")


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def layer_inits(name: str, fan_in: int) -> dict:
  """`kernel_init` and `bias_init` keyword arguments for a layer with `fan_in` inputs."""
  if name == "lecun":
    return {"kernel_init": jax.nn.initializers.lecun_normal(), "bias_init": jax.nn.initializers.zeros}
  if name == "torch":
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return {"kernel_init": _uniform(bound), "bias_init": _uniform(bound)}
  raise ValueError(f"unknown init {name!r}; known: {', '.join(INITS)}")


def check(owner: str, name: str) -> None:
  if name not in INITS:
    raise ValueError(f"{owner}.weight_init must be one of {', '.join(INITS)}; got {name!r}")
