"""Convolutional models, 1D or 2D by the rank of the input: a plain stack and a ResNet.

Inputs (batch, length) get a channel axis; (batch, length, channels) is 1D and
(batch, height, width, channels) is 2D. Channels are last, as Flax expects.
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import activations, initializers
from nets.registry import register

NORMS = ("none", "batch", "layer", "group")
POOLS = ("none", "max", "avg")
HEADS = ("flatten", "avg")


def _check_choice(owner: str, field: str, value: str, options: tuple[str, ...]) -> None:
  if value not in options:
    raise ValueError(f"{owner}.{field} must be one of {', '.join(options)}; got {value!r}")


def _activation(owner: str, name: str) -> Callable[[jax.Array], jax.Array]:
  try:
    return activations.get(name)
  except ValueError as e:
    raise ValueError(f"{owner}.activation: {e}") from None


def _padding(owner: str, value: str, ndim: int):
  """'same' or 'valid', or an integer: that many zeros on each side of every spatial dim."""
  value = str(value).strip().lower()
  if value in ("same", "valid"):
    return value.upper()
  if value.isdigit():
    return [(int(value), int(value))] * ndim
  raise ValueError(
      f"{owner}.padding must be 'same', 'valid' or a non-negative integer; got {value!r}")


def _spatial(x: jax.Array) -> tuple[jax.Array, int]:
  """Gives `x` a channel axis if it has none; returns it and its number of spatial dims."""
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim not in (3, 4):
    raise ValueError("expected input (batch, length), (batch, length, channels) or "
                     f"(batch, height, width, channels); got shape {x.shape}")
  return x, x.ndim - 2


def _num_groups(channels: int) -> int:
  """The most groups (at most 32) that divide `channels` leaving at least 2 channels each."""
  best = 1
  for groups in range(1, min(32, channels // 2) + 1):
    if channels % groups == 0:
      best = groups
  return best


def _norm(kind: str, train: bool) -> Callable[[jax.Array], jax.Array]:
  """A normalisation over the channel axis (and spatial axes for batch and group), or none.

  Call it inside a compact method: the layer is created when the result is applied.
  """
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5)
  if kind == "group":
    return lambda x: nn.GroupNorm(num_groups=_num_groups(x.shape[-1]), epsilon=1e-5)(x)
  return lambda x: x


def _global_avg(x: jax.Array) -> jax.Array:
  return x.mean(axis=tuple(range(1, x.ndim - 1)))


@register("cnn")
class CNN(nn.Module):
  """Layers of conv -> norm -> activation -> pool, then a head and a Dense output.

  `padding` is "same", "valid" or an integer as a string (zeros on each side, like
  PyTorch's `padding=`). `pool` is a window-2 stride-2 pooling after every layer. The
  "flatten" head flattens channel-major, as PyTorch does on NCHW, so a ported Linear
  weight keeps its column order; "avg" pools globally. If `hidden` > 0 a Dense layer of
  that width with the activation comes before the output; dropout is applied just
  before the output layer. Convs have a bias unless followed by batch norm.
  """

  features: tuple[int, ...] = (25, 25, 25)
  kernel_size: tuple[int, ...] = (5, 3, 3)
  strides: tuple[int, ...] = (2, 2, 2)
  padding: str = "1"
  activation: str = "relu"
  norm: str = "none"
  pool: str = "none"
  head: str = "flatten"
  hidden: int = 0
  dropout: float = 0.0
  num_outputs: int = 10
  weight_init: str = "lecun"  # or "torch": see nets.initializers

  def __post_init__(self):
    initializers.check("CNN", self.weight_init)
    if not len(self.features) == len(self.kernel_size) == len(self.strides):
      raise ValueError("CNN.features, CNN.kernel_size and CNN.strides must have equal lengths; got "
                       f"{self.features!r}, {self.kernel_size!r}, {self.strides!r}")
    _activation("CNN", self.activation)
    _padding("CNN", self.padding, 1)
    _check_choice("CNN", "norm", self.norm, NORMS)
    _check_choice("CNN", "pool", self.pool, POOLS)
    _check_choice("CNN", "head", self.head, HEADS)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"CNN.dropout must be in [0, 1); got {self.dropout!r}")
    if self.hidden < 0:
      raise ValueError(f"CNN.hidden must be >= 0; got {self.hidden!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = _activation("CNN", self.activation)
    x, ndim = _spatial(x)
    padding = _padding("CNN", self.padding, ndim)
    window = (2,) * ndim
    for features, kernel, stride in zip(self.features, self.kernel_size, self.strides):
      fan_in = x.shape[-1] * kernel**ndim
      x = nn.Conv(features, (kernel,) * ndim, strides=(stride,) * ndim, padding=padding,
                  use_bias=self.norm != "batch", **initializers.layer_inits(self.weight_init, fan_in))(x)
      x = act(_norm(self.norm, train)(x))
      if self.pool == "max":
        x = nn.max_pool(x, window, strides=window)
      elif self.pool == "avg":
        x = nn.avg_pool(x, window, strides=window)
      if min(x.shape[1:-1]) < 1:
        raise ValueError(f"CNN: the input {x.shape[1:-1]} is too small for these layers")
    if self.head == "avg":
      x = _global_avg(x)
    else:
      x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)
    if self.hidden:
      x = act(nn.Dense(self.hidden, **initializers.layer_inits(self.weight_init, x.shape[-1]))(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, **initializers.layer_inits(self.weight_init, x.shape[-1]))(x)


class BasicBlock(nn.Module):
  """Two 3-wide convs with a shortcut, projected (1-wide conv) when the shape changes."""

  features: int
  strides: int = 1
  norm: str = "batch"
  preact: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ndim = x.ndim - 2
    strides = (self.strides,) * ndim
    conv = functools.partial(nn.Conv, self.features, (3,) * ndim, padding="SAME",
                             use_bias=self.norm == "none")
    project = functools.partial(nn.Conv, self.features, (1,) * ndim, strides=strides,
                                use_bias=self.norm == "none")
    needs_projection = self.strides != 1 or x.shape[-1] != self.features
    norm = functools.partial(_norm, self.norm, train)
    if self.preact:
      h = nn.relu(norm()(x))
      shortcut = project()(h) if needs_projection else x
      h = conv(strides=strides)(h)
      h = conv()(nn.relu(norm()(h)))
      return h + shortcut
    h = nn.relu(norm()(conv(strides=strides)(x)))
    h = norm()(conv()(h))
    shortcut = norm()(project()(x)) if needs_projection else x
    return nn.relu(h + shortcut)


@register("resnet")
class ResNet(nn.Module):
  """A small ResNet of basic blocks, post-activation (He et al. 2015) or pre-activation.

  A stem conv of `width` channels, then one stage per entry of `stage_sizes` (that many
  blocks); each stage doubles the channels and, after the first, starts with stride 2.
  Global average pooling, then Dense. Activations are ReLU.
  """

  stage_sizes: tuple[int, ...] = (2, 2, 2)
  width: int = 16
  stem_kernel: int = 3
  norm: str = "batch"
  preact: bool = False
  num_outputs: int = 10

  def __post_init__(self):
    _check_choice("ResNet", "norm", self.norm, NORMS)
    if not self.stage_sizes or any(n < 1 for n in self.stage_sizes):
      raise ValueError(
          f"ResNet.stage_sizes must be positive block counts; got {self.stage_sizes!r}")
    if self.width < 1:
      raise ValueError(f"ResNet.width must be positive; got {self.width!r}")
    if self.stem_kernel < 1:
      raise ValueError(f"ResNet.stem_kernel must be positive; got {self.stem_kernel!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, ndim = _spatial(x)
    x = nn.Conv(self.width, (self.stem_kernel,) * ndim, padding="SAME",
                use_bias=self.norm == "none")(x)
    if not self.preact:
      x = nn.relu(_norm(self.norm, train)(x))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2**stage, strides, self.norm, self.preact)(x, train)
    if self.preact:
      x = nn.relu(_norm(self.norm, train)(x))
    return nn.Dense(self.num_outputs)(_global_avg(x))
