"""The pure train step: classification and regression, every optimizer, schedules, clipping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from experiments import build, optim, train


def _fit(model_name, objective, batch, optimizer="adam", steps=60, lr=1e-2, **opt_kwargs):
  model = nets.create(model_name, **({"features": (16,)} if model_name == "mlp" else {}),
                      num_outputs=batch["y"].shape[-1] if batch["y"].ndim > 1 else 3)
  schedule = optim.schedule("constant", lr, steps)
  tx = optim.optimizer(optimizer, schedule, **opt_kwargs)
  state = build.init_state(model, tx, batch, jax.random.key(0), None)
  step = jax.jit(functools.partial(train.train_step, model=model, objective=objective, tx=tx, schedule=schedule))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["train/loss"]))
  return state, losses, metrics


def _classification_batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  return {"x": x, "y": (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)}


@pytest.mark.parametrize("optimizer", optim.OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(optimizer):
  lr = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.3}.get(optimizer, 1e-2)
  state, losses, _ = _fit("mlp", nets.objectives.Classification(), _classification_batch(), optimizer, lr=lr,
                          weight_decay=1e-4)
  assert losses[-1] < 0.7 * losses[0], (optimizer, losses[0], losses[-1])
  assert int(state.step) == 60


def test_regression_objective_fits_a_linear_map():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  y = (x @ rng.normal(size=(4, 2))).astype(np.float32)
  _, losses, metrics = _fit("logreg", nets.objectives.Regression(), {"x": x, "y": y}, steps=300, lr=3e-2)
  assert losses[-1] < 0.01 * losses[0]
  assert set(metrics) >= {"train/mse", "train/mae", "train/grad_norm", "train/learning_rate"}


def test_gradient_clipping_bounds_the_update():
  batch = _classification_batch()
  _, _, clipped = _fit("mlp", nets.objectives.Classification(), batch, "sgd", steps=1, lr=1.0, grad_clip_norm=1e-3)
  _, _, free = _fit("mlp", nets.objectives.Classification(), batch, "sgd", steps=1, lr=1.0)
  assert clipped["train/update_norm"] == pytest.approx(1e-3, rel=1e-3)
  assert free["train/update_norm"] > 10 * 1e-3


def test_norms_are_computed_after_the_logged_steps_only():
  batch = _classification_batch()
  model = nets.create("mlp", features=(16,), num_outputs=3)
  schedule = optim.schedule("constant", 1e-2, 7)
  tx = optim.optimizer("adam", schedule)
  state = build.init_state(model, tx, batch, jax.random.key(0), None)
  step = functools.partial(train.train_step, model=model, objective=nets.objectives.Classification(), tx=tx,
                           schedule=schedule)
  every, sparse = jax.jit(step), jax.jit(functools.partial(step, norms_every=3, last_step=7))
  for i in range(7):  # steps 3 and 6 are logged, and 7, the last
    new_state, want = every(state, batch, jax.random.key(1))
    _, got = sparse(state, batch, jax.random.key(1))
    for name in train.NORMS:
      assert float(want[name]) > 0
      assert float(got[name]) == (pytest.approx(float(want[name]), rel=1e-6) if i + 1 in (3, 6, 7) else 0.0), (i, name)
    np.testing.assert_array_equal(got["train/loss"], want["train/loss"])
    state = new_state


def test_schedules():
  s = optim.schedule("warmup_cosine", 1.0, steps=100, warmup_steps=10, min_learning_rate=0.1)
  assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1.0) and float(s(100)) == pytest.approx(0.1)
  assert float(s(55)) == pytest.approx(0.55, abs=0.01)  # half-way down the cosine
  c = optim.schedule("constant", 0.5, steps=100)
  assert float(c(0)) == float(c(99)) == 0.5
  lin = optim.schedule("linear", 1.0, steps=100, warmup_steps=0, min_learning_rate=0.0)
  assert float(lin(50)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.schedule("step", 1.0, 10)
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.optimizer("adamax2", 1.0)


def test_dropout_randomness_is_folded_with_the_step():
  """Same (state, batch, rng) -> same result; the next step draws new dropout masks."""
  model = nets.create("mlp", features=(32,), dropout=0.5, num_outputs=3)
  schedule = optim.schedule("constant", 0.0, 10)  # lr 0: params never change
  tx = optim.optimizer("sgd", schedule)
  batch = _classification_batch()
  state = build.init_state(model, tx, batch, jax.random.key(0), None)
  step = jax.jit(functools.partial(train.train_step, model=model, objective=nets.objectives.Classification(),
                                   tx=tx, schedule=schedule))
  _, m1 = step(state, batch, jax.random.key(1))
  _, m1_again = step(state, batch, jax.random.key(1))
  _, m2 = step(state.replace(step=state.step + 1), batch, jax.random.key(1))
  assert float(m1["train/loss"]) == float(m1_again["train/loss"])
  assert float(m1["train/loss"]) != float(m2["train/loss"])


def test_eval_step_ignores_masked_examples():
  model = nets.create("logreg", num_outputs=3)
  batch = _classification_batch()
  state = build.init_state(model, optim.optimizer("sgd", 0.1), batch, jax.random.key(0), None)
  full = train.eval_step(state, {**batch, "mask": jnp.ones(32)}, jax.random.key(0), model=model,
                         objective=nets.objectives.Classification())
  half = {k: np.concatenate([v[:16], np.zeros_like(v[:16])]) for k, v in batch.items()}
  masked = train.eval_step(state, {**half, "mask": jnp.concatenate([jnp.ones(16), jnp.zeros(16)])},
                           jax.random.key(0), model=model, objective=nets.objectives.Classification())
  first = train.eval_step(state, {**{k: v[:16] for k, v in batch.items()}, "mask": jnp.ones(16)},
                          jax.random.key(0), model=model, objective=nets.objectives.Classification())
  assert float(full["count"]) == 32 and float(masked["count"]) == 16
  np.testing.assert_allclose(masked["loss"], first["loss"], rtol=1e-6)


def test_the_parameters_moving_average_is_the_hand_computed_one():
  batch = _classification_batch()
  model = nets.create("mlp", features=(16,), num_outputs=3)
  schedule = optim.schedule("constant", 0.1, 4)
  tx = optim.optimizer("sgd", schedule)
  state = build.init_state(model, tx, batch, jax.random.key(0), None, ema=True)
  step = jax.jit(functools.partial(train.train_step, model=model, objective=nets.objectives.Classification(), tx=tx,
                                   schedule=schedule, ema_decay=0.75))
  expected = jax.tree.map(np.asarray, state.params)  # the average starts at the initial parameters
  for _ in range(4):
    state, _ = step(state, batch, jax.random.key(1))
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * np.asarray(p), expected, state.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), state.ema_params, expected)
  assert not np.allclose(state.ema_params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
  assert train.evaluated(state).params is state.ema_params  # what evaluations and samples see
  plain = build.init_state(model, tx, batch, jax.random.key(0), None)
  assert plain.ema_params is None and train.evaluated(plain) is plain
