"""Gradient accumulation (--grad_accum_steps): K micro-batches in one step train as the whole batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from experiments import build, optim, train
from experiments.config import Config, ConfigError
from conftest import run_cli


def _steps(model, objective, batch, accum_steps, steps=3, tx=None):
  schedule = optim.schedule("constant", 1e-2, steps)
  # (not Adam: it scales the rounding noise of gradients that are zero in theory, such as
  # attention's key bias, up to full steps)
  tx = tx or optim.optimizer("momentum", schedule, grad_clip_norm=1.0, weight_decay=1e-3)
  state = build.init_state(model, tx, {"x": batch["x"][:1]}, jax.random.key(0), None)
  step = jax.jit(functools.partial(train.train_step, model=model, objective=objective, tx=tx, schedule=schedule,
                                   accum_steps=accum_steps))
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(1))
  return state, metrics


def _assert_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


CASES = {
    "mlp classifier": lambda rng: (nets.create("mlp", features=(16,), num_outputs=3), nets.objectives.Classification(),
                                   {"x": rng.normal(size=(24, 5)).astype(np.float32),
                                    "y": rng.integers(0, 3, 24).astype(np.int32)}),
    "gpt language model": lambda rng: (
        nets.create("gpt", vocab_size=11, max_len=8, num_layers=1, num_heads=2, embed_dim=8),
        nets.objectives.LanguageModel(),
        {"x": rng.integers(0, 11, (12, 8)).astype(np.int32), "y": rng.integers(0, 11, (12, 8)).astype(np.int32)}),
    "cnn regression": lambda rng: (nets.create("cnn", features=(4,), kernel_size=(3,), strides=(1,), num_outputs=2, hidden=8),
                                   nets.objectives.Regression(),
                                   {"x": rng.normal(size=(12, 10, 1)).astype(np.float32),
                                    "y": rng.normal(size=(12, 2)).astype(np.float32)}),
}


@pytest.mark.parametrize("case,k", [("mlp classifier", 4), ("gpt language model", 2), ("cnn regression", 3)])
def test_micro_batches_train_as_the_whole_batch(case, k):
  model, objective, batch = CASES[case](np.random.default_rng(0))
  whole, whole_metrics = _steps(model, objective, batch, 1)
  accumulated, metrics = _steps(model, objective, batch, k)
  _assert_close(whole.params, accumulated.params, 2e-6)
  _assert_close(whole.opt_state, accumulated.opt_state, 2e-6)
  for name in ("train/loss", "train/accuracy", "train/grad_norm"):
    if name in whole_metrics:
      np.testing.assert_allclose(float(metrics[name]), float(whole_metrics[name]), rtol=1e-5)
  # and differs from training on one micro-batch alone
  alone, _ = _steps(model, objective, jax.tree.map(lambda x: x[::k], batch), 1)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(alone.params),
                                                         jax.tree.leaves(accumulated.params))) > 1e-4


def test_both_players_of_a_gan_accumulate():
  """A GAN's step with K micro-batches: both players move, by one update of each one's
  optimizer on the mean of the micro-batches' gradients (micro-batch i: examples i, i + K, ...;
  its noise from keys folded with i)."""
  rng = np.random.default_rng(0)
  model = nets.create("gan_mlp", hidden=8, depth=1, data_dim=2)
  objective = nets.objectives.create("gan")
  batch = {"x": rng.normal(size=(8, 2)).astype(np.float32)}
  tx = optax.multi_transform({"generator": optax.sgd(0.1), "discriminator": optax.adam(1e-2)},
                             lambda params: {k: k for k in params})
  k = 2
  before = build.init_state(model, tx, {"x": batch["x"][:1]}, jax.random.key(0), None)
  after, _ = _steps(model, objective, batch, k, steps=1, tx=tx)

  step_rng = jax.random.fold_in(jax.random.key(1), 0)
  model_rng, objective_rng = jax.random.split(step_rng)

  def mean_loss(params, i):
    from nets.apply import Apply  # pylint: disable=g-import-not-at-top
    apply = Apply(model, params, before.model_state, jax.random.fold_in(model_rng, i), train=True)
    micro = jax.tree.map(lambda x: x[i::k], batch)
    return jnp.mean(objective(apply, micro, jax.random.fold_in(objective_rng, i))["loss"])

  grads = jax.tree.map(lambda *g: sum(g) / k, *[jax.grad(mean_loss)(before.params, i) for i in range(k)])
  updates, _ = tx.update(grads, tx.init(before.params), before.params)
  _assert_close(after.params, optax.apply_updates(before.params, updates), 1e-6)
  for player in ("generator", "discriminator"):
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(before.params[player]),
                                                           jax.tree.leaves(after.params[player]))) > 1e-4


def test_batch_statistics_pass_from_one_micro_batch_to_the_next():
  rng = np.random.default_rng(0)
  model = nets.create("cnn", features=(4,), kernel_size=(3,), strides=(1,), num_outputs=2, norm="batch")
  batch = {"x": rng.normal(size=(8, 10, 1)).astype(np.float32), "y": rng.integers(0, 2, 8).astype(np.int32)}
  state, _ = _steps(model, nets.objectives.Classification(), batch, 2, steps=1)
  stats = jax.tree.leaves(state.model_state)
  assert stats and all(bool(jnp.all(jnp.isfinite(s))) for s in stats)


def test_bad_accumulation_is_one_line():
  with pytest.raises(ConfigError, match="--grad_accum_steps=3 must divide --batch_size=8"):
    Config(batch_size=8, grad_accum_steps=3)
  proc = run_cli("--batch_size=10", "--grad_accum_steps=4", "--steps=1", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --grad_accum_steps=4 must divide --batch_size=10 (each micro-batch is batch_size / grad_accum_steps "
      "examples)"]


def test_a_run_with_accumulation_ends_where_the_whole_batch_run_does(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  from conftest import train_in_process  # pylint: disable=g-import-not-at-top
  from experiments import checkpoint  # pylint: disable=g-import-not-at-top
  run = ["--model=mlp", "--mlp.features=16", "--batch_size=40", "--steps=3", "--eval_every=0", "--log_every=3",
         "--optimizer=momentum", "--learning_rate=0.1"]
  ends = []
  for k in (1, 4):
    summary = train_in_process(*run, f"--grad_accum_steps={k}", workdir=str(tmp_path / str(k)))
    ends.append((summary, checkpoint.Checkpoints(os.path.join(tmp_path, str(k), "checkpoints")).restore_raw()))
  _assert_close(ends[0][1]["params"], ends[1][1]["params"], 2e-6)
  assert ends[0][0]["eval/accuracy"] == ends[1][0]["eval/accuracy"]
