"""Optax optimizers and learning-rate schedules chosen by name."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "yogi", "lamb", "lion")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "warmup_linear")
# Optimizers whose weight decay is decoupled from the gradient (Loshchilov & Hutter); for the
# others --weight_decay adds wd * params to the gradient, i.e. an L2 penalty, as PyTorch does.
DECOUPLED = ("adamw", "lamb", "lion")


def schedule(name: str, learning_rate: float, steps: int, warmup_steps: int = 0,
             min_learning_rate: float = 0.0) -> Callable[[int], float]:
  """Learning rate as a function of the step."""
  if name == "constant":
    if warmup_steps:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, learning_rate, warmup_steps), optax.constant_schedule(learning_rate)],
          [warmup_steps])
    return optax.constant_schedule(learning_rate)
  if name in ("cosine", "warmup_cosine"):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate, peak_value=learning_rate,
        warmup_steps=warmup_steps, decay_steps=max(steps, warmup_steps + 1), end_value=min_learning_rate)
  if name in ("linear", "warmup_linear"):
    return optax.join_schedules([
        optax.linear_schedule(0.0, learning_rate, warmup_steps),
        optax.linear_schedule(learning_rate, min_learning_rate, max(steps - warmup_steps, 1)),
    ], [warmup_steps])
  raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")


def weights_only(params: Any) -> Any:
  """True for the weight matrices and embeddings (Flax's "kernel", "embedding"), False for
  biases and normalisation scales: the parameters nanoGPT and BERT decay."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)


def optimizer(name: str, lr: Callable[[int], float] | float, *, momentum: float = 0.9,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              grad_clip_norm: float = 0.0, decay_weights_only: bool = False) -> optax.GradientTransformation:
  """An Optax optimizer with optional global-norm clipping and weight decay (of every
  parameter, or with `decay_weights_only` of the weights only)."""
  mask = weights_only if decay_weights_only else None
  if name == "sgd":
    opt = optax.sgd(lr)
  elif name == "momentum":
    opt = optax.sgd(lr, momentum=momentum)
  elif name == "nesterov":
    opt = optax.sgd(lr, momentum=momentum, nesterov=True)
  elif name == "adam":
    opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  elif name == "adamw":
    opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
  elif name == "rmsprop":
    opt = optax.rmsprop(lr, decay=b2, eps=eps)  # decay is --b2
  elif name == "adagrad":
    opt = optax.adagrad(lr, eps=eps)
  elif name == "yogi":
    opt = optax.yogi(lr, b1=b1, b2=b2, eps=eps)
  elif name == "lamb":
    opt = optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
  elif name == "lion":
    opt = optax.lion(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask)
  else:
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
  chain = []
  if grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay > 0 and name not in DECOUPLED:
    chain.append(optax.add_decayed_weights(weight_decay, mask))
  return optax.chain(*chain, opt) if chain else opt
