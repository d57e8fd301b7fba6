"""Attributions: which parts of an input drove a model's output.

Every method is a pure function of a batched forward function `fn` (inputs [batch, ...] ->
scores [batch, classes]: logits, or a language model's next-token logits) and of a batch of
inputs `x` with one `target` class per example. Each is written for one example and
`vmap`-ped over the batch; the integration steps, noise samples or occluded copies of an
example are the batch the model sees. `batch_size` runs the examples that many at a time
(`lax.map`), to bound memory. Jit them with `fn` static, or close over it.

- `gradient`, `gradient_x_input`: the gradient of the target score (saliency, signed;
  take `abs` for Simonyan et al.'s map) and its product with the input.
- `integrated_gradients` (Sundararajan et al. 2017): the path integral of gradients from
  a baseline, by Gauss-Legendre or Riemann rules; returns the attributions and the
  completeness gap, sum(attributions) - (f(x) - f(baseline)).
- `smoothgrad` (Smilkov et al. 2017), and its squared variant: gradients averaged over
  noisy copies.
- `occlusion` (Zeiler & Fergus 2014): the score's drop when a sliding window is replaced.
- Layer methods find a layer by its Flax path ("Conv_2", "embed/tokens") with
  `flax.linen.intercept_methods`, so the models are used unedited: `layers` lists them,
  `grad_cam` (Selvaraju et al. 2017) weighs a layer's channels by their mean gradient, and
  `layer_integrated_gradients` integrates along a layer's output (token attributions from
  a language model's embeddings).
- `attention_maps` and `attention_rollout` (Abnar & Zuidema 2020): the weights each
  attention layer sows into "intermediates", and their product across layers.
- Trust: `deletion_insertion` (faithfulness curves), `spearman` (rank correlation), and
  `randomized_top_down` (the cascading parameter randomisation of Adebayo et al. 2018).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Fn = Callable[[Array], Array]

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def _score(fn: Fn, x: Array, target: Array) -> Array:
  """The target's score for each of a batch of copies of one example: fn(x)[:, target]."""
  out = fn(x)
  if out.ndim != 2:
    raise ValueError(f"the forward function must return scores [batch, classes]; got shape {out.shape}")
  return out[:, target]


def _per_example(one: Callable[..., Any], batch_size: int | None, *args) -> Any:
  """Runs `one` (a function of one example's arrays) over the leading axis of `args`."""
  if batch_size is None or batch_size >= args[0].shape[0]:
    return jax.vmap(one)(*args)
  return jax.lax.map(lambda a: one(*a), args, batch_size=batch_size)


def _targets(x: Array, target: Array | int) -> Array:
  return jnp.broadcast_to(jnp.asarray(target, jnp.int32), x.shape[:1])


def _grad_of_score(fn: Fn, points: Array, target: Array) -> Array:
  """d score / d input at each of `points` (a batch of versions of one example)."""
  return jax.grad(lambda p: _score(fn, p, target).sum())(points)


def gradient(fn: Fn, x: Array, target: Array | int, *, batch_size: int | None = None) -> Array:
  """d fn(x)[target] / dx for each example (signed)."""

  def one(xi, ti):
    return _grad_of_score(fn, xi[None], ti)[0]

  return _per_example(one, batch_size, x, _targets(x, target))


def gradient_x_input(fn: Fn, x: Array, target: Array | int, *, batch_size: int | None = None) -> Array:
  return x * gradient(fn, x, target, batch_size=batch_size)


def rule(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Points in (0, 1] (or [0, 1]) and weights summing to 1 for integrating over alpha."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1; got {steps}")
  if method == "gausslegendre":
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2
  if method == "riemann_trapezoid":
    if steps < 2:
      raise ValueError("riemann_trapezoid needs steps >= 2")
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    return alphas, weights
  offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
  if method not in offsets:
    raise ValueError(f"integration method must be one of {', '.join(RULES)}; got {method!r}")
  return (np.arange(steps) + offsets[method]) / steps, np.full(steps, 1.0 / steps)


def _baseline_for(x: Array, baseline: Array | float | None) -> Array:
  """The baseline of each example: zeros, a scalar, one example's shape, or x's shape."""
  if baseline is None:
    baseline = 0.0
  baseline = jnp.asarray(baseline, x.dtype)
  if baseline.shape not in ((), x.shape[1:], x.shape):
    raise ValueError(f"baseline must be a scalar, of one example's shape {x.shape[1:]} or of the batch's "
                     f"{x.shape}; got {baseline.shape}")
  return jnp.broadcast_to(baseline, x.shape)


def integrated_gradients(fn: Fn, x: Array, target: Array | int, *, baseline: Array | float | None = None,
                         baselines: Array | None = None, steps: int = 64, method: str = "gausslegendre",
                         batch_size: int | None = None) -> tuple[Array, Array]:
  """Integrated gradients and each example's completeness gap.

  The path runs from `baseline` (zeros by default; a scalar, one example, or one per
  example) to x. `baselines` [k, ...] instead draws from a distribution of baselines: the
  attributions are averaged over its k members (expected gradients over a fixed sample).
  The gap is sum(attributions) - (f(x) - mean f(baseline)); it falls toward 0 as `steps`
  grows (Captum's convergence delta, with the same sign).
  """
  alphas, weights = (jnp.asarray(a, x.dtype) for a in rule(method, steps))
  if baselines is not None:
    if baselines.ndim != x.ndim or baselines.shape[1:] != x.shape[1:]:
      raise ValueError(f"baselines must be [k, {', '.join(map(str, x.shape[1:]))}]; got {baselines.shape}")
    starts = jnp.asarray(baselines, x.dtype)
  else:
    starts = None
  per_example_baseline = _baseline_for(x, baseline)

  def along(xi, bi, ti):  # one example, one baseline
    shape = (steps,) + (1,) * xi.ndim
    points = bi + alphas.reshape(shape) * (xi - bi)
    grads = _grad_of_score(fn, points, ti)
    return (xi - bi) * jnp.tensordot(weights, grads, axes=1)

  def one(xi, bi, ti):
    if starts is None:
      attr = along(xi, bi, ti)
      ends = _score(fn, jnp.stack([xi, bi]), ti)
      return attr, attr.sum() - (ends[0] - ends[1])
    attr = jax.vmap(lambda b: along(xi, b, ti))(starts).mean(0)
    f_x = _score(fn, xi[None], ti)[0]
    return attr, attr.sum() - (f_x - _score(fn, starts, ti).mean())

  return _per_example(one, batch_size, x, per_example_baseline, _targets(x, target))


def input_range(x: Array) -> Array:
  """Each example's max - min (SmoothGrad's noise is a fraction of it)."""
  flat = x.reshape(x.shape[0], -1)
  return flat.max(1) - flat.min(1)


def smoothgrad(fn: Fn, x: Array, target: Array | int, key: Array, *, samples: int = 50, noise: float = 0.15,
               squared: bool = False, batch_size: int | None = None) -> Array:
  """The gradient averaged over `samples` copies with Gaussian noise of standard deviation
  `noise` x the example's range (squared gradients with `squared`: SmoothGrad-Squared).
  Example i of the batch draws its noise from fold_in(key, i), whatever `batch_size`."""

  def one(xi, ti, scale, i):
    eps = jax.random.normal(jax.random.fold_in(key, i), (samples,) + xi.shape, xi.dtype)
    grads = _grad_of_score(fn, xi + noise * scale * eps, ti)
    return (grads**2 if squared else grads).mean(0)

  return _per_example(one, batch_size, x, _targets(x, target), input_range(x),
                      jnp.arange(x.shape[0]))


def _windows(spatial: tuple[int, ...], window: Sequence[int], stride: Sequence[int]) -> np.ndarray:
  """Boolean masks [num_windows, *spatial], one per position of a sliding window."""
  if len(window) != len(spatial) or len(stride) != len(spatial):
    raise ValueError(f"occlusion window {tuple(window)} and stride {tuple(stride)} need one entry per spatial "
                     f"axis of the input {spatial}")
  if any(w < 1 or w > n for w, n in zip(window, spatial)) or any(s < 1 for s in stride):
    raise ValueError(f"occlusion window {tuple(window)} must fit the input {spatial}, strides be positive")
  starts = [sorted(set(range(0, n - w + 1, s)) | {n - w}) for n, w, s in zip(spatial, window, stride)]
  masks = []
  for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(spatial)):
    m = np.zeros(spatial, bool)
    m[tuple(slice(c, c + w) for c, w in zip(corner, window))] = True
    masks.append(m)
  return np.stack(masks)


def occlusion(fn: Fn, x: Array, target: Array | int, *, window: Sequence[int], stride: Sequence[int] | None = None,
              value: float | int = 0, channels_last: bool | None = None,
              batch_size: int | None = None) -> Array:
  """Per input position: the mean drop of the target score over the windows covering it.

  The window slides over the spatial axes; channels (the last axis, when `channels_last`,
  which defaults to True for inputs of 3 or more axes) are covered whole. Works for
  signals [b, length(, c)], images [b, h, w, c] and token sequences [b, length] (set
  `value` to a padding or mask token). The result has x's shape.
  """
  channels_last = x.ndim >= 3 if channels_last is None else channels_last
  spatial = x.shape[1:-1] if channels_last else x.shape[1:]
  masks = _windows(tuple(spatial), window, stride or window)
  cover = jnp.asarray(masks.sum(0), jnp.float32)
  masks = jnp.asarray(masks[..., None] if channels_last else masks)

  def one(xi, ti):
    copies = jnp.where(masks, jnp.asarray(value, xi.dtype), xi[None])
    scores = _score(fn, jnp.concatenate([xi[None], copies]), ti)
    drops = scores[0] - scores[1:]
    attr = jnp.tensordot(drops, masks.astype(jnp.float32), axes=1) / (cover[..., None] if channels_last else cover)
    return jnp.broadcast_to(attr, xi.shape)

  return _per_example(one, batch_size, x, _targets(x, target))


# Layers, found by their Flax paths.

@dataclasses.dataclass(frozen=True)
class Layer:
  """A module called while the model runs: its path, class name and output shape."""
  path: str
  kind: str
  shape: tuple[int, ...]


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


def layers(fn: Fn, x: Array) -> list[Layer]:
  """The modules `fn` calls on `x` (batch of one), in call order, with their output shapes
  (for a single example, the batch axis dropped). Computes shapes only."""
  found: dict[str, Layer] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(out, jax.Array) and context.module.path:
      name = _path(context.module)
      batched = out.ndim >= 1 and out.shape[0] == 1  # (not, e.g., position embeddings shared by the batch)
      found.setdefault(name, Layer(name, type(context.module).__name__, tuple(out.shape[1:] if batched else out.shape)))
    return out

  def run(xb):
    with nn.intercept_methods(record):
      return fn(xb)

  jax.eval_shape(run, jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
  return list(found.values())


def _find(fn: Fn, x: Array, layer: str) -> Layer:
  known = layers(fn, x)
  for entry in known:
    if entry.path == layer:
      return entry
  raise ValueError(f"no layer {layer!r}; the model's layers: " + ", ".join(f"{l.path} {list(l.shape)}" for l in known))


def with_layer(fn: Fn, layer: str, replace: Callable[[Array], Array] | None = None,
                keep: list[Array] | None = None) -> Fn:
  """`fn` with the output of `layer` recorded into `keep` and/or passed through `replace`."""

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and _path(context.module) == layer:
      if keep is not None:
        keep.append(out)
      if replace is not None:
        out = replace(out)
    return out

  def run(xb):
    with nn.intercept_methods(intercept):
      return fn(xb)

  return run


def activation(fn: Fn, x: Array, layer: str) -> Array:
  """The output of `layer` for a batch x."""
  keep: list[Array] = []
  with_layer(fn, layer, keep=keep)(x)
  if not keep:
    raise ValueError(f"layer {layer!r} was not called")
  return keep[0]


def _layer_grad(fn: Fn, xb: Array, layer: str, points: Array, target: Array) -> Array:
  """d score / d (the layer's output), evaluated with the layer's output set to each of
  `points` [k, *layer shape] (the input xb [1, ...] repeated k times below the layer)."""

  def score(z):
    run = with_layer(fn, layer, replace=lambda out: z.astype(out.dtype))
    return _score(run, jnp.broadcast_to(xb, (z.shape[0],) + xb.shape[1:]), target).sum()

  return jax.grad(score)(points)


def grad_cam(fn: Fn, x: Array, target: Array | int, layer: str, *, batch_size: int | None = None) -> Array:
  """Grad-CAM at `layer` (channels last, with spatial axes): relu(sum_c mean(dS/dA_c) A_c).

  The map has the layer's spatial shape ([b, *spatial]); `upsample` stretches it to the input.
  """
  found = _find(fn, x, layer)
  if len(found.shape) < 2:
    raise ValueError(f"Grad-CAM needs a layer with spatial axes and channels; {layer!r} outputs "
                     f"{list(found.shape)} per example")

  def one(xi, ti):
    xb = xi[None]
    a = activation(fn, xb, layer)
    g = _layer_grad(fn, xb, layer, a, ti)[0]
    weights = g.mean(axis=tuple(range(g.ndim - 1)))
    return jax.nn.relu(jnp.tensordot(a[0], weights, axes=1))

  return _per_example(one, batch_size, x, _targets(x, target))


def spatial_layers(fn: Fn, x: Array) -> list[Layer]:
  """Layers Grad-CAM can use: outputs with spatial axes and channels, not the input's shape."""
  return [l for l in layers(fn, x) if len(l.shape) >= 2 and len(l.shape) >= x.ndim - 1]


def upsample(cam: Array, spatial: tuple[int, ...]) -> Array:
  """A batch of maps [b, *s] resized (linearly) to [b, *spatial]."""
  return jax.image.resize(cam, cam.shape[:1] + tuple(spatial), "linear")


def layer_integrated_gradients(fn: Fn, x: Array, target: Array | int, layer: str, *, steps: int = 64,
                               method: str = "gausslegendre", baseline: float = 0.0,
                               batch_size: int | None = None) -> tuple[Array, Array]:
  """Integrated gradients along the output of `layer` (e.g. token embeddings, for integer
  inputs), from `baseline` (a constant) to its value on x. Returns the attributions of the
  layer's output summed over its last (feature) axis, [b, *positions], and the completeness gap."""
  _find(fn, x, layer)
  alphas, weights = rule(method, steps)

  def one(xi, ti):
    xb = xi[None]
    a = activation(fn, xb, layer)[0]
    b = jnp.full_like(a, baseline)
    shape = (steps,) + (1,) * a.ndim
    points = b + jnp.asarray(alphas, a.dtype).reshape(shape) * (a - b)
    grads = _layer_grad(fn, xb, layer, points, ti)
    attr = (a - b) * jnp.tensordot(jnp.asarray(weights, a.dtype), grads, axes=1)
    at_b = _score(with_layer(fn, layer, replace=lambda out: b[None].astype(out.dtype)), xb, ti)[0]
    gap = attr.sum() - (_score(fn, xb, ti)[0] - at_b)
    return attr.sum(-1), gap

  return _per_example(one, batch_size, x, _targets(x, target))


# Attention.

def attention_maps(model: nn.Module, variables: Any, tokens: Array, **kwargs) -> dict[str, Array]:
  """Every attention layer's weights, {path: [batch, heads, queries, keys]}, as the model
  sows them ("attention_weights" in "intermediates"), in call order."""
  _, sown = model.apply(variables, tokens, mutable=["intermediates"], **kwargs)
  maps = {}
  for path, value in jax.tree_util.tree_flatten_with_path(sown.get("intermediates", {}))[0]:
    names = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    if "attention_weights" in names:
      maps["/".join(str(n) for n in names if n != "attention_weights" and not isinstance(n, int))] = value
  if not maps:
    raise ValueError(f"{type(model).__name__} has no attention layers (it sows no attention weights)")
  return maps


def attention_rollout(maps: Sequence[Array], residual: float = 0.5) -> Array:
  """Attention rollout over self-attention layers (first to last), [b, q, k]: each layer's
  head-mean weights mixed with the identity for the residual stream, rows renormalised,
  multiplied through the layers."""
  rolled = None
  for weights in maps:
    a = weights.mean(1)
    a = residual * jnp.eye(a.shape[-1], dtype=a.dtype) + (1 - residual) * a
    a = a / a.sum(-1, keepdims=True)
    rolled = a if rolled is None else jnp.einsum("bqk,bkj->bqj", a, rolled)
  if rolled is None:
    raise ValueError("attention_rollout needs at least one layer's maps")
  return rolled


# Trust: faithfulness and sanity checks.

def feature_scores(attributions: Array, channels_last: bool) -> Array:
  """One score per input position (channels summed), flattened: [b, positions]."""
  a = attributions.sum(-1) if channels_last else attributions
  return a.reshape(a.shape[0], -1)


def deletion_insertion(fn: Fn, x: Array, target: Array | int, attributions: Array, *, steps: int | None = None,
                       baseline: Array | float | None = None, channels_last: bool | None = None,
                       key: Array | None = None, batch_size: int | None = None) -> tuple[Array, Array]:
  """Deletion and insertion curves (Petsiuk et al. 2018): the target's softmax probability as
  input positions are replaced by the baseline in order of decreasing attribution (deletion),
  or put back into the baseline in that order (insertion). Curves are [b, steps + 1], from 0
  to all positions changed; their mean over the fractions is the area under each (lower
  deletion and higher insertion are more faithful). Positions of equal attribution (e.g. the
  zeros of a ReLU map) are taken in a random order drawn from `key` (by position without it)."""
  channels_last = x.ndim >= 3 if channels_last is None else channels_last
  scores = feature_scores(attributions, channels_last)
  n = scores.shape[1]
  steps = n if steps is None else steps
  counts = jnp.asarray(np.round(np.linspace(0, n, steps + 1)).astype(np.int32))
  base = _baseline_for(x, baseline)
  if key is None:
    shuffles = jnp.broadcast_to(jnp.arange(n), scores.shape)
  else:
    shuffles = jax.vmap(lambda i: jax.random.permutation(jax.random.fold_in(key, i), n))(jnp.arange(scores.shape[0]))

  def one(xi, bi, si, ti, shuffle):
    order = shuffle[jnp.argsort(-si[shuffle], stable=True)]  # ties in the shuffled order
    rank = jnp.argsort(order)  # 0 for the most important position
    changed = rank[None, :] < counts[:, None]  # [steps + 1, positions]
    shape = (steps + 1,) + xi.shape[:-1] + (1,) if channels_last else (steps + 1,) + xi.shape
    changed = changed.reshape(shape)
    probs = lambda z: jax.nn.softmax(fn(z), axis=-1)[:, ti]
    return probs(jnp.where(changed, bi, xi)), probs(jnp.where(changed, xi, bi))

  return _per_example(one, batch_size, x, base, scores, _targets(x, target), shuffles)


def _ranks(v: Array) -> Array:
  """Ranks along the last axis, ties given their average rank (as scipy's rankdata)."""
  def one(row):
    ordered = jnp.sort(row)
    low = jnp.searchsorted(ordered, row, side="left")
    high = jnp.searchsorted(ordered, row, side="right")
    return (low + high - 1) / 2
  return jax.vmap(one)(v.astype(jnp.float32))


def spearman(a: Array, b: Array) -> Array:
  """Spearman rank correlation of each example's a and b (flattened), [b]; NaN where either
  is constant (e.g. an all-zero map), as scipy gives."""
  ra, rb = _ranks(a.reshape(a.shape[0], -1)), _ranks(b.reshape(b.shape[0], -1))
  ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
  return (ra * rb).sum(-1) / jnp.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))


def randomized_top_down(params: dict, fresh: dict, order: Sequence[str]) -> list[tuple[str, dict]]:
  """Cascading randomisation: [(layer, params with that layer and every layer above it
  taken from `fresh`)], from the output layer down to the first. `order` lists the top-level
  entries of the parameter tree in the order the model calls them (`call_order`; parameter
  trees come back with their keys sorted, and "Conv_10" sorts before "Conv_2")."""
  names = list(order)
  if sorted(names) != sorted(params):
    raise ValueError(f"order {names} must name each top-level parameter entry once: {sorted(params)}")
  out = []
  for i in range(len(names) - 1, -1, -1):
    out.append((names[i], {k: (fresh[k] if j >= i else params[k]) for j, k in enumerate(names)}))
  return out


def call_order(fn: Fn, x: Array, params: dict) -> list[str]:
  """The top-level entries of `params` in the order `fn` first calls them on `x`."""
  seen = []
  for layer in layers(fn, x):
    top = layer.path.split("/")[0]
    if top in params and top not in seen:
      seen.append(top)
  return seen + sorted(set(params) - set(seen))  # (entries never called: after the rest)
