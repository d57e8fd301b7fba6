"""Pure objectives: what a model is trained to minimise, and what is reported.

An objective is called as `objective(apply, batch, rng)` where `apply(*inputs)` runs the
model (its variables, train/eval mode and dropout randomness already bound by the caller)
and `batch` is a dict of arrays with a leading batch axis. It returns a dict of
per-example arrays of shape (batch,): the entry "loss" is the quantity whose batch mean is
minimised; every entry is averaged over the examples for reporting. Returning per-example
values lets the caller mask padded examples and average exactly across devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
Apply = Callable[..., Any]


class Objective(Protocol):

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    ...


@dataclasses.dataclass(frozen=True)
class Classification:
  """Softmax cross-entropy on integer labels `batch["y"]` given inputs `batch["x"]`."""

  label_smoothing: float = 0.0

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    del rng
    logits = apply(batch["x"])
    labels = batch["y"]
    num_classes = logits.shape[-1]
    # The loss is computed in float32 whatever the model's compute dtype.
    logits = logits.astype(jnp.float32)
    if self.label_smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), self.label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets)
    else:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    # Cross-entropy against the true labels, whatever the smoothing: comparable across runs.
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    accuracy = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": loss, "cross_entropy": nll, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class Regression:
  """Mean squared error between the model's output and real targets `batch["y"]`."""

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    del rng
    pred = apply(batch["x"]).astype(jnp.float32)
    target = jnp.reshape(batch["y"], pred.shape).astype(jnp.float32)
    err = (pred - target).reshape(pred.shape[0], -1)
    mse = jnp.mean(err**2, axis=-1)
    return {"loss": mse, "mse": mse, "mae": jnp.mean(jnp.abs(err), axis=-1)}


OBJECTIVES: dict[str, type] = {
    "classification": Classification,
    "regression": Regression,
}


def create(name: str, **kwargs: Any) -> Objective:
  try:
    cls = OBJECTIVES[name]
  except KeyError:
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}") from None
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in kwargs.items() if k in fields})
