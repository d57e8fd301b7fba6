"""Fully connected models: logistic regression and the multilayer perceptron."""

import flax.linen as nn
import jax

from nets import activations, initializers
from nets.registry import register


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _activation(owner: str, name: str):
  try:
    return activations.get(name)
  except ValueError as e:
    raise ValueError(f"{owner}.activation: {e}") from None


def _check_dropout(owner: str, rate: float) -> None:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{owner}.dropout must be in [0, 1); got {rate!r}")


@register("logreg")
class LogisticRegression(nn.Module):
  """One affine map from the flattened input to the logits."""

  num_outputs: int = 10
  weight_init: str = "lecun"  # or "torch": see nets.initializers

  def __post_init__(self):
    initializers.check("LogisticRegression", self.weight_init)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = _flatten(x)
    return nn.Dense(self.num_outputs, **initializers.layer_inits(self.weight_init, x.shape[-1]))(x)


@register("mlp")
class MLP(nn.Module):
  """Dense hidden layers of widths `features`, each followed by the activation.

  With `residual`, a hidden layer whose input and output widths agree computes
  h + act(dense(h)) instead of act(dense(h)); the first layer, whose input is the
  flattened example, never does unless its width equals the input size. Dropout, when
  on, is applied to each hidden layer's new activations (the residual branch).
  """

  features: tuple[int, ...] = (100, 100)
  activation: str = "relu"
  dropout: float = 0.0
  residual: bool = False
  num_outputs: int = 10
  weight_init: str = "lecun"  # or "torch": see nets.initializers

  def __post_init__(self):
    _activation("MLP", self.activation)
    initializers.check("MLP", self.weight_init)
    _check_dropout("MLP", self.dropout)
    if any(int(f) < 1 for f in self.features):
      raise ValueError(f"MLP.features must be positive widths; got {self.features!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = _activation("MLP", self.activation)
    h = _flatten(x)
    for width in self.features:
      new = act(nn.Dense(width, **initializers.layer_inits(self.weight_init, h.shape[-1]))(h))
      new = nn.Dropout(self.dropout, deterministic=not train)(new)
      h = h + new if self.residual and h.shape[-1] == width else new
    return nn.Dense(self.num_outputs, **initializers.layer_inits(self.weight_init, h.shape[-1]))(h)
