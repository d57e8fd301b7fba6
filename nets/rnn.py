"""Recurrent models whose cells follow PyTorch: its equations, gate order, biases and init.

Each cell has two fused Dense layers, "ih" (input -> all gates) and "hh" (hidden -> all
gates), both with a bias, so parameter counts equal PyTorch's. A PyTorch weight maps over
as `ih.kernel = weight_ih.T`, `ih.bias = bias_ih` (likewise for hh), gates stacked in
PyTorch's order: i, f, g, o for the LSTM and r, z, n for the GRU.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import initializers
from nets.registry import register


def torch_uniform(hidden: int):
  """PyTorch's init for recurrent weights and biases: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
  bound = 1.0 / math.sqrt(hidden)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class _Cell(nn.RNNCellBase):
  """A cell whose carry is zeros of shape (*batch, features); `gates` blocks per Dense."""

  features: int
  gates = 1  # not a field: the number of stacked gate blocks

  def _project(self, x: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    init = torch_uniform(self.features)
    size = self.gates * self.features
    ih = nn.Dense(size, kernel_init=init, bias_init=init, name="ih")(x)
    hh = nn.Dense(size, kernel_init=init, bias_init=init, name="hh")(h)
    return ih, hh

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
    del rng
    return jnp.zeros(tuple(input_shape[:-1]) + (self.features,), jnp.float32)

  @property
  def num_feature_axes(self) -> int:
    return 1


class SimpleRNNCell(_Cell):
  """h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""

  gates = 1

  @nn.compact
  def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    ih, hh = self._project(x, h)
    h = jnp.tanh(ih + hh)
    return h, h


class GRUCell(_Cell):
  """r, z = sigmoid(...); n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1-z) n + z h."""

  gates = 3

  @nn.compact
  def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    ih, hh = self._project(x, h)
    ir, iz, i_n = jnp.split(ih, 3, axis=-1)
    hr, hz, hn = jnp.split(hh, 3, axis=-1)
    r = jax.nn.sigmoid(ir + hr)
    z = jax.nn.sigmoid(iz + hz)
    n = jnp.tanh(i_n + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


class LSTMCell(_Cell):
  """Gates i, f, g, o; c' = f c + i g; h' = o tanh(c'). The carry is (c, h), as in Flax."""

  gates = 4

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, jax.Array],
               x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    c, h = carry
    ih, hh = self._project(x, h)
    i, f, g, o = jnp.split(ih + hh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
    zeros = super().initialize_carry(rng, input_shape)
    return zeros, zeros


CELLS: dict[str, type[_Cell]] = {"rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}
OUTPUTS = ("all", "last", "mean", "sequence")


def _cell(owner: str, name: str) -> type[_Cell]:
  try:
    return CELLS[name]
  except KeyError:
    raise ValueError(f"{owner}.cell must be one of {', '.join(CELLS)}; got {name!r}") from None


class RNNLayer(nn.Module):
  """One recurrent layer: (B, T, F) -> (B, T, hidden * directions).

  Bidirectional outputs are [forward, backward] along features; the backward half at
  step t has read inputs t..T-1, so its final state is at step 0.
  """

  cell: str = "gru"
  hidden: int = 6
  bidirectional: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cell = _cell("RNNLayer", self.cell)
    forward = nn.RNN(cell(self.hidden, name="forward"))
    if not self.bidirectional:
      return forward(x)
    return nn.Bidirectional(forward, nn.RNN(cell(self.hidden, name="backward")))(x)


@register("rnn")
class RNN(nn.Module):
  """Stacked recurrent layers over a sequence, then a Dense head.

  Input (B, T) is a sequence of scalars; (B, T, F) one of F-vectors. `output` picks what
  the head reads: "all" every step's output flattened to (B, T * hidden * dirs); "last"
  the final state of each direction (the forward output at step T-1 and, if
  bidirectional, the backward output at step 0); "mean" the mean over time; "sequence"
  applies the head at every step and returns (B, T, num_outputs). Dropout is applied
  between layers and before the head.
  """

  cell: str = "gru"
  hidden: int = 6
  layers: int = 1
  bidirectional: bool = True
  output: str = "all"
  dropout: float = 0.0
  num_outputs: int = 10
  weight_init: str = "lecun"  # of the head; or "torch": see nets.initializers. Cells follow PyTorch.

  def __post_init__(self):
    _cell("RNN", self.cell)
    initializers.check("RNN", self.weight_init)
    if self.output not in OUTPUTS:
      raise ValueError(f"RNN.output must be one of {', '.join(OUTPUTS)}; got {self.output!r}")
    if self.hidden < 1:
      raise ValueError(f"RNN.hidden must be positive; got {self.hidden!r}")
    if self.layers < 1:
      raise ValueError(f"RNN.layers must be positive; got {self.layers!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"RNN.dropout must be in [0, 1); got {self.dropout!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f"RNN expects input (batch, time) or (batch, time, features); got {x.shape}")
    for i in range(self.layers):
      if i:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = RNNLayer(self.cell, self.hidden, self.bidirectional, name=f"layer{i}")(x)
    if self.output == "all":
      x = x.reshape(x.shape[0], -1)
    elif self.output == "last":
      last = x[:, -1]
      if self.bidirectional:
        last = jnp.concatenate([last[:, :self.hidden], x[:, 0, self.hidden:]], axis=-1)
      x = last
    elif self.output == "mean":
      x = x.mean(axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, name="head", **initializers.layer_inits(self.weight_init, x.shape[-1]))(x)


@register("rnn_lm")
class RNNLM(nn.Module):
  """A recurrent language model (char-rnn): tokens [B, T] -> next-token logits [B, T, V].

  Inputs are one-hot (`embed_dim=0`, as in char-rnn) or embedded; `layers` stacked
  unidirectional cells with dropout between layers and before the head. With
  `decode=True` each layer's carry is kept in the "cache" collection, so generation feeds
  one token per call (see `nets.decoding`).
  """

  vocab_size: int = 0
  cell: str = "lstm"
  hidden: int = 128
  layers: int = 2
  embed_dim: int = 0
  dropout: float = 0.0
  decode: bool = False

  def __post_init__(self):
    _cell("RNNLM", self.cell)
    for name in ("hidden", "layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"RNNLM.{name} must be positive; got {getattr(self, name)!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"RNNLM.dropout must be in [0, 1); got {self.dropout!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    if self.vocab_size < 1:
      raise ValueError(f"RNNLM.vocab_size must be positive (set from the data); got {self.vocab_size!r}")
    if self.embed_dim:
      x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    else:
      x = jax.nn.one_hot(tokens, self.vocab_size)
    for i in range(self.layers):
      if i:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      cell = CELLS[self.cell](self.hidden, name=f"cell{i}")
      layer = nn.RNN(cell, return_carry=True, name=f"layer{i}")
      if not self.decode:
        _, x = layer(x)
        continue
      carry = self.variable("cache", f"carry{i}", cell.initialize_carry, None, x[:, 0].shape)
      new_carry, x = layer(x, initial_carry=carry.value)
      if not self.is_initializing():
        carry.value = new_carry
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.vocab_size, name="head")(x)
