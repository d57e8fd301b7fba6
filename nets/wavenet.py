"""WaveNet (van den Oord et al. 2016) with Fast WaveNet generation (Paine et al. 2016), and mu-law coding.

- `mu_law_encode` / `mu_law_decode`: the 8-bit mu-law companding of the paper, float audio in
  [-1, 1] <-> integer ids 0..levels-1 (silence is id levels // 2).
- `wavenet`: ids [B, T] -> logits [B, T, V] of the id at t + 1 (the language-model convention:
  the spine trains it with next-token cross-entropy on targets shifted by one). Embedding ->
  causal conv -> residual layers of dilated causal convs with gated tanh * sigmoid units,
  each with a 1x1 residual and a 1x1 skip output -> ReLU(sum of skips) -> 1x1 -> ReLU -> 1x1.
- `generate`: sampling in one `jax.lax.fori_loop` with the Fast WaveNet queues, so each new
  sample costs one position per layer, not the whole receptive field.

The cache. With `decode=True` every causal convolution keeps, in the "cache" collection, a
circular queue ("queue", [B, (kernel_size - 1) * dilation, C]) of its most recent inputs and
the number of inputs it has seen ("index"); the queue starts all zero, which is exactly the
zero left-padding of the full model. A call with T new positions convolves them with the
queue's contents and pushes them in; with T = 1 it reads only the kernel_size - 1 taps it
needs, so a step costs O(layers) whatever the dilations. The cache is created by
`model.init` (see `nets.decoding.fresh_cache`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets.registry import register

Array = jax.Array


def _xp(x: Any):
  """jax.numpy for JAX arrays (and tracers), numpy for anything else."""
  return jnp if isinstance(x, jax.Array) else np


def mu_law_encode(audio: Any, levels: int = 256) -> Any:
  """Float audio in [-1, 1] (clipped) -> int32 ids in [0, levels): F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu).

  mu = levels - 1; F(x) in [-1, 1] is quantised uniformly to round((F + 1) / 2 * mu), so 0.0
  maps to levels // 2 (128 of 256) and the map is monotone. numpy in, numpy out; jnp in, jnp out.
  """
  xp = _xp(audio)
  mu = levels - 1
  x = xp.clip(xp.asarray(audio, xp.float32), -1.0, 1.0)
  y = xp.sign(x) * xp.log1p(mu * xp.abs(x)) / math.log1p(mu)
  return xp.floor((y + 1.0) / 2.0 * mu + 0.5).astype(xp.int32)


def mu_law_decode(ids: Any, levels: int = 256) -> Any:
  """Ids in [0, levels) -> float32 audio in [-1, 1], the inverse of `mu_law_encode` up to quantisation."""
  xp = _xp(ids)
  mu = levels - 1
  y = 2.0 * xp.asarray(ids, xp.float32) / mu - 1.0
  return (xp.sign(y) * xp.expm1(xp.abs(y) * math.log1p(mu)) / mu).astype(xp.float32)


class CausalConv(nn.Module):
  """A dilated causal 1D convolution [B, T, Cin] -> [B, T, features]: output t sees inputs
  t, t - d, ..., t - (kernel_size - 1) d (zeros before the start). With `decode=True` it keeps
  its past inputs in a circular queue in the "cache" collection (see the module docstring)."""

  features: int
  kernel_size: int = 2
  dilation: int = 1
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)  # like nn.Conv: compute in the wider type
    span = (self.kernel_size - 1) * self.dilation  # past inputs each output needs
    if not self.decode or span == 0:
      return self._conv(x, kernel, span) + bias
    batch, length, channels = x.shape
    queue = self.variable("cache", "queue", jnp.zeros, (batch, span, channels), x.dtype)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if self.is_initializing():  # model.init: create the cache, compute as in training
      return self._conv(x, kernel, span) + bias
    # The input of time s lives in slot s % span; before this call the slots hold times i - span .. i - 1.
    i = index.value
    if length == 1:  # one step: read the kernel_size - 1 taps i - span, i - span + d, ..., i - d
      taps = queue.value[:, (i + self.dilation * jnp.arange(self.kernel_size - 1)) % span]
      y = jnp.einsum("bkc,kco->bo", jnp.concatenate([taps, x], axis=1), kernel)[:, None]
      queue.value = jax.lax.dynamic_update_slice(queue.value, x, (0, i % span, 0))
    else:  # several positions (a prompt): the queue in time order, then the new inputs
      window = jnp.concatenate([queue.value[:, (i + jnp.arange(span)) % span], x], axis=1)
      y = self._conv(window, kernel, 0)
      keep = np.arange(max(length - span, 0), length)  # the newest inputs, at most span of them
      queue.value = queue.value.at[:, (i + keep) % span].set(x[:, keep])
    index.value = i + length
    return y + bias

  def _conv(self, x: Array, kernel: Array, pad: int) -> Array:
    """Dilated convolution with `pad` zeros on the left and none on the right."""
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(1,), padding=[(pad, 0)],
                                        rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"))


class ResidualLayer(nn.Module):
  """Dilated causal conv to 2 * residual channels -> tanh(a) * sigmoid(b) -> 1x1 residual (added to
  the input) and 1x1 skip. Returns (new residual stream, skip output)."""

  residual_channels: int
  skip_channels: int
  kernel_size: int
  dilation: int
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    h = CausalConv(2 * self.residual_channels, self.kernel_size, self.dilation, self.decode, name="dilated")(x)
    a, b = jnp.split(h, 2, axis=-1)
    z = jnp.tanh(a) * nn.sigmoid(b)
    residual = nn.Dense(self.residual_channels, name="residual")(z)
    skip = nn.Dense(self.skip_channels, name="skip")(z)
    return x + residual, skip


def _default_dilations() -> tuple[int, ...]:
  return tuple(2**i for i in range(10)) * 2  # two stacks of 1, 2, ..., 512


@register("wavenet")
class WaveNet(nn.Module):
  """WaveNet over mu-law ids: ids [B, T] -> logits [B, T, vocab_size] of the id at t + 1.

  The defaults (20 layers, two stacks of dilations 1..512, kernel 2: a receptive field of
  2,048 samples, 128 ms at 16 kHz; 32 residual and 64 skip channels, about 0.18 M parameters)
  are sized for a small CPU; the paper's models are wider (e.g. 512 skip channels). The input
  is a learned embedding (a one-hot times a matrix) followed by a causal conv of `kernel_size`.
  """

  vocab_size: int = 256
  residual_channels: int = 32
  skip_channels: int = 64
  dilations: tuple[int, ...] = _default_dilations()
  kernel_size: int = 2
  decode: bool = False

  def __post_init__(self):
    checks = [
        ("vocab_size", self.vocab_size >= 2, "must be at least 2 (256 for 8-bit mu-law)"),
        ("residual_channels", self.residual_channels >= 1, "must be positive"),
        ("skip_channels", self.skip_channels >= 1, "must be positive"),
        ("dilations", isinstance(self.dilations, tuple) and len(self.dilations) >= 1
         and all(isinstance(d, int) and d >= 1 for d in self.dilations), "must be a non-empty tuple of positive ints"),
        ("kernel_size", self.kernel_size >= 1, "must be positive"),
    ]
    for name, ok, why in checks:
      if not ok:
        raise ValueError(f"wavenet.{name} {why}; got {getattr(self, name)!r}")
    super().__post_init__()

  @property
  def receptive_field(self) -> int:
    """How many input samples (the current one included) the logits at one position depend on."""
    return 1 + (self.kernel_size - 1) * (1 + sum(self.dilations))

  @nn.compact
  def __call__(self, ids: Array, train: bool = False) -> Array:
    del train  # no dropout or batch statistics
    x = nn.Embed(self.vocab_size, self.residual_channels, name="embed")(ids)
    x = CausalConv(self.residual_channels, self.kernel_size, 1, self.decode, name="causal")(x)
    skips = 0.0
    for i, dilation in enumerate(self.dilations):
      x, skip = ResidualLayer(self.residual_channels, self.skip_channels, self.kernel_size, dilation, self.decode,
                              name=f"layer{i}")(x)
      skips = skips + skip
    h = nn.relu(nn.Dense(self.skip_channels, name="out1")(nn.relu(skips)))
    return nn.Dense(self.vocab_size, name="out2")(h)


def generate(model: WaveNet, params: Any, rng: Array, num_samples: int, batch: int = 1, prompt: Array | None = None,
             temperature: float = 1.0) -> Array:
  """Samples ids [batch, num_samples] continuing `prompt` [batch, P] (default: one silent sample).

  The prompt is fed in one decode-mode call that fills every layer's queue; then each step
  samples one id from the last logits, `jax.random.categorical(fold_in(rng, step), logits /
  temperature)` for step 0..num_samples-1, and feeds it through every layer once. Jit with
  `model`, `num_samples` and `batch` static (a prompt's shape fixes `batch`).
  """
  model = model.clone(decode=True)
  if prompt is None:
    prompt = jnp.full((batch, 1), model.vocab_size // 2, jnp.int32)  # mu-law silence
  prompt = jnp.asarray(prompt, jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), prompt[:, :1]))
  empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

  def run(cache, ids):
    logits, variables = model.apply({"params": params, "cache": cache}, ids, mutable=["cache"])
    return logits[:, -1].astype(jnp.float32), variables["cache"]

  last, cache = run(empty, prompt)
  out = jnp.zeros((prompt.shape[0], num_samples), jnp.int32)

  def body(step, carry):
    out, last, cache = carry
    token = jax.random.categorical(jax.random.fold_in(rng, step), last / temperature).astype(jnp.int32)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    last, cache = run(cache, token[:, None])
    return out, last, cache

  out, _, _ = jax.lax.fori_loop(0, num_samples, body, (out, last, cache))
  return out
