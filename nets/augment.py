"""Data augmentation as pure functions of a random key and a batch, for use inside a jitted
step: each example gets its own draw, and the same key gives the same batch.

Signals are `x` of shape (batch, time) or (batch, time, channels); images (batch, height,
width, channels). `pipeline(...)` composes the ones asked for into one function
`(batch, key) -> batch`; mixup and cutmix (after Zhang et al. 2018 and Yun et al. 2019)
also add `mix_y`, the partner's labels, and `mix_weight`, the share of the example's own
label, which `nets.objectives.Classification` reads.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]

SIGNAL = ("shift", "scale", "noise", "stretch")
IMAGE = ("crop_padding", "flip")


def shift(key: jax.Array, x: jax.Array, max_shift: int, circular: bool = True) -> jax.Array:
  """Moves each signal by a uniform whole number of steps in [-max_shift, max_shift]: around
  the end (circular) or with zeros coming in."""
  length = x.shape[1]
  steps = jax.random.randint(key, (x.shape[0],), -max_shift, max_shift + 1)

  def one(signal, s):
    moved = jnp.roll(signal, s, axis=0)
    if circular:
      return moved
    t = jnp.arange(length).reshape((length,) + (1,) * (signal.ndim - 1))
    return jnp.where((t - s >= 0) & (t - s < length), moved, 0)
  return jax.vmap(one)(x, steps)


def scale(key: jax.Array, x: jax.Array, amount: float) -> jax.Array:
  """Multiplies each example by a uniform factor in [1 - amount, 1 + amount]."""
  factor = jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype, 1 - amount, 1 + amount)
  return x * factor


def noise(key: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """Adds Gaussian noise of standard deviation `std`."""
  return x + std * jax.random.normal(key, x.shape, x.dtype)


def stretch(key: jax.Array, x: jax.Array, amount: float) -> jax.Array:
  """Stretches each signal in time about its centre by a uniform factor in [1 - amount,
  1 + amount] (linear interpolation; the ends held beyond the signal), keeping its length."""
  length = x.shape[1]
  factors = jax.random.uniform(key, (x.shape[0],), jnp.float32, 1 - amount, 1 + amount)
  t = jnp.arange(length, dtype=jnp.float32)
  centre = (length - 1) / 2

  def one(signal, f):
    source = (t - centre) / f + centre
    flat = signal.reshape(length, -1)
    out = jax.vmap(lambda column: jnp.interp(source, t, column), in_axes=1, out_axes=1)(flat)
    return out.reshape(signal.shape).astype(signal.dtype)
  return jax.vmap(one)(x, factors)


def crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
  """Pads each image with `padding` zeros on every side and cuts a random crop of its size."""
  _, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  corners = jax.random.randint(key, (x.shape[0], 2), 0, 2 * padding + 1)
  return jax.vmap(lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1], 0), (h, w, c)))(padded, corners)


def flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors each image left to right with probability 1/2."""
  flipped = jax.random.bernoulli(key, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(flipped, x[:, :, ::-1], x)


def _partners(key: jax.Array, batch: Batch) -> tuple[jax.Array, Batch]:
  partner = jax.random.permutation(key, batch["x"].shape[0])
  return partner, {k: v[partner] for k, v in batch.items()}


def mixup(key: jax.Array, batch: Batch, alpha: float) -> Batch:
  """Each example becomes `w x + (1 - w) x'` with a random partner x' of the batch and
  w ~ Beta(alpha, alpha); its label weight is w."""
  k_partner, k_weight = jax.random.split(key)
  _, other = _partners(k_partner, batch)
  n = batch["x"].shape[0]
  weight = jax.random.beta(k_weight, alpha, alpha, (n,))
  w = weight.reshape((n,) + (1,) * (batch["x"].ndim - 1)).astype(batch["x"].dtype)
  return {**batch, "x": w * batch["x"] + (1 - w) * other["x"], "mix_y": other["y"], "mix_weight": weight}


def cutmix(key: jax.Array, batch: Batch, alpha: float) -> Batch:
  """Each example takes a random box (images) or stretch of time (signals) from a random
  partner, of area 1 - w with w ~ Beta(alpha, alpha); its label weight is the share of it
  that is its own."""
  k_partner, k_weight, k_where = jax.random.split(key, 3)
  _, other = _partners(k_partner, batch)
  x = batch["x"]
  n = x.shape[0]
  weight = jax.random.beta(k_weight, alpha, alpha, (n,))
  spatial = x.shape[1:3] if x.ndim == 4 else x.shape[1:2]
  side = jnp.sqrt(1 - weight) if len(spatial) == 2 else 1 - weight  # the box's share of each side
  inside = jnp.ones((n,) + tuple(spatial), bool)
  for axis, size in enumerate(spatial):
    extent = jnp.round(side * size).astype(jnp.int32)
    start = jax.random.randint(jax.random.fold_in(k_where, axis), (n,), 0, size + 1) - extent // 2
    start = jnp.clip(start, 0, size - extent)
    position = jnp.arange(size).reshape((1,) + (1,) * axis + (size,) + (1,) * (len(spatial) - axis - 1))
    shape = (n,) + (1,) * len(spatial)
    inside &= (position >= start.reshape(shape)) & (position < (start + extent).reshape(shape))
  own = 1 - jnp.mean(inside.reshape(n, -1).astype(jnp.float32), axis=1)
  mask = inside.reshape(inside.shape + (1,) * (x.ndim - 1 - len(spatial)))
  return {**batch, "x": jnp.where(mask, other["x"], x), "mix_y": other["y"], "mix_weight": own}


def pipeline(shift_steps: int = 0, shift_circular: bool = True, scale_amount: float = 0.0, noise_std: float = 0.0,
             stretch_amount: float = 0.0, crop_padding: int = 0, flip_images: bool = False, mixup_alpha: float = 0.0,
             cutmix_alpha: float = 0.0) -> Callable[[Batch, jax.Array], Batch] | None:
  """The augmentations asked for, in this order: stretch, shift, scale, noise (signals),
  crop, flip (images), then mixup or cutmix (one per batch, chosen at random when both are
  on); None when none is."""
  steps = []
  if stretch_amount:
    steps.append(lambda k, b: {**b, "x": stretch(k, b["x"], stretch_amount)})
  if shift_steps:
    steps.append(lambda k, b: {**b, "x": shift(k, b["x"], shift_steps, shift_circular)})
  if scale_amount:
    steps.append(lambda k, b: {**b, "x": scale(k, b["x"], scale_amount)})
  if noise_std:
    steps.append(lambda k, b: {**b, "x": noise(k, b["x"], noise_std)})
  if crop_padding:
    steps.append(lambda k, b: {**b, "x": crop(k, b["x"], crop_padding)})
  if flip_images:
    steps.append(lambda k, b: {**b, "x": flip(k, b["x"])})
  if mixup_alpha and cutmix_alpha:
    steps.append(lambda k, b: jax.lax.cond(jax.random.bernoulli(jax.random.fold_in(k, 1)),
                                           lambda: mixup(k, b, mixup_alpha), lambda: cutmix(k, b, cutmix_alpha)))
  elif mixup_alpha:
    steps.append(lambda k, b: mixup(k, b, mixup_alpha))
  elif cutmix_alpha:
    steps.append(lambda k, b: cutmix(k, b, cutmix_alpha))
  if not steps:
    return None

  def augment(batch: Batch, key: jax.Array) -> Batch:
    for i, step in enumerate(steps):
      batch = step(jax.random.fold_in(key, i), batch)
    return batch
  return augment
