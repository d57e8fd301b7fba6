"""Federated rounds: many clients' local training at once, and the server's aggregation.

A round samples clients, trains each from the server's parameters on its own data, and moves
the server by the clients' averaged change. Everything here is a pure function of arrays:

- `client_update`: a client's local SGD over the steps whose `active` flag is on, as one
  `lax.while_loop`. Clients of unequal size are padded to a common number of steps, and the
  padded steps are never run: under `vmap` the loop stops with the busiest client of the
  batch, the others held exactly as they were, so padding changes nothing. FedProx's
  proximal term (Li et al. 2020, `mu`) and SCAFFOLD's control-variate correction
  (Karimireddy et al. 2020) are options of the same loop.
- `run_clients`: `vmap` of it over the sampled clients (a leading client axis on every
  input), returning each client's change (and SCAFFOLD's new control variates).
- `aggregate`: the average change, weighted by client size (McMahan et al. 2017), or
  clipped per client and noised for differential privacy (DP-FedAvg, McMahan et al. 2018:
  each change clipped to L2 norm `clip`, summed, divided by the number of clients, plus
  Gaussian noise of standard deviation `noise_multiplier * clip / clients`).
- `server_step`: the server moves by an Optax optimizer applied to the negative average
  change (a pseudo-gradient): `optax.sgd(1.0)` is FedAvg's plain averaging, `optax.adam`,
  `optax.yogi` and `optax.adagrad` are Reddi et al.'s (2021) FedAdam, FedYogi and FedAdagrad.

FedSGD is FedAvg with one local step on each client's whole data.
`loss_fn(params, batch, key) -> scalar` is the objective on one batch (its examples'
mean loss; padding rows carry `mask` 0 and are left out by the objective).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
LossFn = Callable[[Params, Any, jax.Array], jax.Array]


def zeros_like(tree: Params) -> Params:
  """Zeros in the shape of `tree` (SCAFFOLD's first control variates)."""
  return jax.tree.map(jnp.zeros_like, tree)


def local_training(loss_fn: LossFn, params: Params, batches: Any, active: jax.Array, key: jax.Array, *,
                   lr: float, mu: float = 0.0, correction: Params | None = None) -> tuple[Params, jax.Array]:
  """`client_update`'s parameters and the mean loss of its active steps (each before its step).

  The active steps run in their order as a `lax.while_loop` of as many iterations as there are:
  under `vmap` over clients, the loop runs until the busiest client of the batch is done (the
  others' parameters held as they are by JAX's batched loop), not for every padded step."""
  count = active.sum()
  order = jnp.argsort(~active, stable=True)  # the active steps first, in their order

  def step(carry):
    n, w, total = carry
    i = order[n]
    batch = jax.tree.map(lambda b: b[i], batches)
    loss, grad = jax.value_and_grad(loss_fn)(w, batch, jax.random.fold_in(key, i))
    if mu:
      grad = jax.tree.map(lambda g, a, b: g + mu * (a - b), grad, w, params)
    if correction is not None:
      grad = jax.tree.map(jnp.add, grad, correction)
    return n + 1, jax.tree.map(lambda a, g: a - lr * g, w, grad), total + loss

  _, final, total = jax.lax.while_loop(lambda carry: carry[0] < count, step,
                                       (jnp.zeros((), count.dtype), params, jnp.zeros((), jnp.float32)))
  return final, total / jnp.maximum(count, 1)


def client_update(loss_fn: LossFn, params: Params, batches: Any, active: jax.Array, key: jax.Array, *,
                  lr: float, mu: float = 0.0, correction: Params | None = None) -> Params:
  """The client's parameters after its local steps: SGD with learning rate `lr` on each of
  `batches` (a pytree whose leaves have a leading [steps] axis) where `active` [steps] is
  true, plus `mu / 2 ||w - params||^2` (FedProx) and a constant `correction` added to every
  gradient (SCAFFOLD's c - c_i). Step i's randomness is fold_in(key, i)."""
  return local_training(loss_fn, params, batches, active, key, lr=lr, mu=mu, correction=correction)[0]


class ClientResult(NamedTuple):
  delta: Params  # each client's final parameters minus the server's: [clients, ...]
  control: Params | None  # SCAFFOLD: each client's new control variate c_i+ (None otherwise)
  loss: jax.Array  # [clients]: each client's mean training loss over its local steps


def run_clients(loss_fn: LossFn, params: Params, batches: Any, active: jax.Array, keys: jax.Array, *, lr: float,
                mu: float = 0.0, server_control: Params | None = None,
                client_controls: Params | None = None) -> ClientResult:
  """Every sampled client's local training at once (`vmap` over the leading client axis of
  `batches`, `active` [clients, steps] and `keys` [clients]). With `server_control` and the
  sampled clients' `client_controls` it runs SCAFFOLD (option II: c_i+ = c_i - c +
  (x - y_i) / (K_i lr), K_i the client's active steps)."""
  scaffold = server_control is not None

  def one(b, on, key, c_i):
    correction = jax.tree.map(jnp.subtract, server_control, c_i) if scaffold else None
    final, loss = local_training(loss_fn, params, b, on, key, lr=lr, mu=mu, correction=correction)
    delta = jax.tree.map(jnp.subtract, final, params)
    if not scaffold:
      return delta, None, loss
    k = jnp.maximum(on.sum(), 1).astype(jnp.float32)
    new_c = jax.tree.map(lambda ci, c, d: ci - c - d / (k * lr), c_i, server_control, delta)
    return delta, new_c, loss

  controls = client_controls if scaffold else jnp.zeros(active.shape[0])
  return ClientResult(*jax.vmap(one)(batches, active, keys, controls))


def clip(delta: Params, max_norm: float) -> Params:
  """`delta` scaled down to L2 norm at most `max_norm` (over all its leaves)."""
  norm = optax.global_norm(delta)
  return jax.tree.map(lambda d: d * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12)), delta)


def aggregate(deltas: Params, weights: jax.Array, *, clip_norm: float | None = None, noise_multiplier: float = 0.0,
              key: jax.Array | None = None) -> Params:
  """The clients' average change: weighted by `weights` [clients] (their sizes; 0 for a
  client that is not there). With `clip_norm` (DP-FedAvg) each change is clipped, the clipped
  changes of the clients present are averaged with equal weights, and Gaussian noise of
  standard deviation noise_multiplier * clip_norm / (clients present) is added to each
  coordinate (drawn from `key`)."""
  if clip_norm is None:
    if noise_multiplier:
      raise ValueError("noise without a clipping norm has no privacy guarantee: set clip_norm")
    share = weights / weights.sum()
    return jax.tree.map(lambda d: jnp.tensordot(share, d, axes=1), deltas)
  present = (weights > 0).astype(jnp.float32)
  count = jnp.maximum(present.sum(), 1.0)
  clipped = jax.vmap(lambda d: clip(d, clip_norm))(deltas)
  mean = jax.tree.map(lambda d: jnp.tensordot(present, d, axes=1) / count, clipped)
  if not noise_multiplier:
    return mean
  leaves, tree = jax.tree.flatten(mean)
  keys = jax.random.split(key, len(leaves))
  std = noise_multiplier * clip_norm / count
  return jax.tree.unflatten(tree, [l + std * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def server_step(tx: optax.GradientTransformation, params: Params, opt_state: Any, average_delta: Params):
  """The server's move: the optimizer applied to the pseudo-gradient -average_delta."""
  pseudo_grad = jax.tree.map(jnp.negative, average_delta)
  updates, opt_state = tx.update(pseudo_grad, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def sample_clients(key: jax.Array, num_clients: int, per_round: int) -> jax.Array:
  """`per_round` distinct client indices, uniformly (the round's key decides)."""
  if not 1 <= per_round <= num_clients:
    raise ValueError(f"cannot sample {per_round} clients per round from {num_clients}")
  return jax.random.choice(key, num_clients, (per_round,), replace=False)


def scaffold_init(params: Params, num_clients: int) -> dict[str, Params]:
  """SCAFFOLD's state: the server's control variate and every client's, all zeros."""
  return {"server_control": zeros_like(params),
          "client_controls": jax.tree.map(lambda p: jnp.zeros((num_clients,) + p.shape, p.dtype), params)}


def scaffold_server_control(server_control: Params, old: Params, new: Params, num_clients: int) -> Params:
  """c + (sampled / N) x mean over the sampled clients of (c_i+ - c_i)."""
  sampled = jax.tree.leaves(old)[0].shape[0]
  return jax.tree.map(lambda c, o, n: c + (sampled / num_clients) * (n - o).mean(0), server_control, old, new)
