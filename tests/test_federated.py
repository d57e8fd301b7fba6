"""nets.federated: the rounds against what they must equal."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nets import federated as fed


def loss_fn(params, batch, key):
  del key
  logits = batch["x"] @ params["w"] + params["b"]
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
  mask = batch["mask"]
  return (per_example * mask).sum() / jnp.maximum(mask.sum(), 1)


PARAMS = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}


def _data(n, seed):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.normal(size=(n, 4)), jnp.float32), "y": jnp.asarray(rng.integers(0, 3, n)),
          "mask": jnp.ones(n)}


def _pad(batch, rows):
  """One batch padded to `rows` examples with masked garbage."""
  n = batch["x"].shape[0]
  return {"x": jnp.concatenate([batch["x"], jnp.full((rows - n, 4), 7.0)]),
          "y": jnp.concatenate([batch["y"], jnp.zeros(rows - n, jnp.int32)]),
          "mask": jnp.concatenate([batch["mask"], jnp.zeros(rows - n)])}


def _stack(*trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **{"rtol": 1e-5, "atol": 1e-6, **kw})


KEY = jax.random.key(0)


def test_fedavg_with_one_client_one_step_and_the_full_batch_is_one_sgd_step():
  data = _data(30, 1)
  result = fed.run_clients(loss_fn, PARAMS, _stack(_stack(data)), jnp.ones((1, 1), bool), jax.random.split(KEY, 1),
                           lr=0.1)
  tx = optax.sgd(1.0)
  params, _ = fed.server_step(tx, PARAMS, tx.init(PARAMS), fed.aggregate(result.delta, jnp.array([30.0])))
  grads = jax.grad(loss_fn)(PARAMS, data, KEY)
  _close(params, jax.tree.map(lambda p, g: p - 0.1 * g, PARAMS, grads))


def test_fedsgd_is_centralised_large_batch_sgd():
  sizes = [5, 12, 20]
  parts = [_data(n, i) for i, n in enumerate(sizes)]
  batches = _stack(*[_stack(_pad(p, 20)) for p in parts])  # [3 clients, 1 step, 20 rows]
  result = fed.run_clients(loss_fn, PARAMS, batches, jnp.ones((3, 1), bool), jax.random.split(KEY, 3), lr=0.5)
  average = fed.aggregate(result.delta, jnp.array(sizes, jnp.float32))
  union = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
  grads = jax.grad(loss_fn)(PARAMS, union, KEY)
  _close(jax.tree.map(jnp.add, PARAMS, average), jax.tree.map(lambda p, g: p - 0.5 * g, PARAMS, grads))


def test_vmap_over_clients_equals_a_loop_and_padding_changes_nothing():
  steps = [3, 5, 1]
  clients = [[_pad(_data(8, 10 * c + s), 8) for s in range(k)] for c, k in enumerate(steps)]
  padded = [c + [_pad(_data(2, 99), 8)] * (5 - len(c)) for c in clients]  # garbage steps, switched off
  batches = _stack(*[_stack(*c) for c in padded])
  active = jnp.array([[i < k for i in range(5)] for k in steps])
  keys = jax.random.split(KEY, 3)
  together = fed.run_clients(loss_fn, PARAMS, batches, active, keys, lr=0.2)
  for i, c in enumerate(clients):
    alone = fed.client_update(loss_fn, PARAMS, _stack(*c), jnp.ones(len(c), bool), keys[i], lr=0.2)
    _close(jax.tree.map(lambda d: d[i], together.delta), jax.tree.map(jnp.subtract, alone, PARAMS))


def test_fedprox_and_scaffold_reduce_to_fedavg():
  batches = _stack(*[_stack(*[_data(6, 3 * c + s) for s in range(4)]) for c in range(3)])
  active, keys = jnp.ones((3, 4), bool), jax.random.split(KEY, 3)
  plain = fed.run_clients(loss_fn, PARAMS, batches, active, keys, lr=0.3)
  _close(fed.run_clients(loss_fn, PARAMS, batches, active, keys, lr=0.3, mu=0.0).delta, plain.delta)
  pulled = fed.run_clients(loss_fn, PARAMS, batches, active, keys, lr=0.3, mu=1.0)
  assert optax.global_norm(pulled.delta) < optax.global_norm(plain.delta)  # the proximal term holds clients back
  zeros = fed.zeros_like(PARAMS)
  scaffold = fed.run_clients(loss_fn, PARAMS, batches, active, keys, lr=0.3, server_control=zeros,
                             client_controls=jax.tree.map(lambda z: jnp.stack([z] * 3), zeros))
  _close(scaffold.delta, plain.delta)
  # one local step: the new control variate is the client's gradient at the server's parameters
  one = fed.run_clients(loss_fn, PARAMS, jax.tree.map(lambda b: b[:, :1], batches), active[:, :1], keys, lr=0.3,
                        server_control=zeros, client_controls=jax.tree.map(lambda z: jnp.stack([z] * 3), zeros))
  for i in range(3):
    grads = jax.grad(loss_fn)(PARAMS, jax.tree.map(lambda b: b[i, 0], batches), keys[i])
    _close(jax.tree.map(lambda c: c[i], one.control), grads, rtol=1e-4, atol=1e-5)
  # the server's control moves by (sampled / N) x the clients' mean change: 3 of 12 clients here
  old = jax.tree.map(lambda z: jnp.stack([z] * 3), zeros)
  moved = fed.scaffold_server_control(zeros, old, one.control, num_clients=12)
  _close(moved, jax.tree.map(lambda c: 0.25 * c.mean(0), one.control))


def test_dp_clipping_bounds_each_update_and_the_noise_has_the_stated_deviation():
  deltas = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 1000)) * [[0.1], [1.0], [5.0], [20.0]])}
  for i in range(4):
    clipped = fed.clip(jax.tree.map(lambda d: d[i], deltas), 2.0)
    assert float(optax.global_norm(clipped)) <= 2.0 + 1e-5
  zero = {"w": jnp.zeros((4, 100_000))}
  noised = fed.aggregate(zero, jnp.ones(4), clip_norm=2.0, noise_multiplier=1.5, key=KEY)
  np.testing.assert_allclose(float(jnp.std(noised["w"])), 1.5 * 2.0 / 4, rtol=0.02)
  with pytest.raises(ValueError, match="noise without a clipping norm"):
    fed.aggregate(zero, jnp.ones(4), noise_multiplier=1.0)
  with pytest.raises(ValueError, match="cannot sample 11 clients per round from 10"):
    fed.sample_clients(KEY, 10, 11)
