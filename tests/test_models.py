"""Tests of the model families: shapes, the MNIST-1D paper sizes, cell equations, training."""

import dataclasses
import functools
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from nets import rnn as rnn_lib

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def traced(model, shape, train=False):
  """The output shape and the variables' shapes of `model` on zeros of `shape`, not run."""
  init = functools.partial(model.init_with_output, train=train)
  out, variables = jax.eval_shape(init, RNGS, jnp.zeros(shape))
  return out.shape, variables


def random_variables(model, *args):
  """Variables shaped as `model.init(..., *args)` would make them, filled with numpy noise.

  Tests that only need some random weights use this: initialising for real compiles
  every initializer, which is slow on a small CPU. Real initialisation is exercised by
  the training tests.
  """
  shapes = jax.eval_shape(model.init, RNGS, *args)
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype), shapes)


def randn(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def num_params(variables):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables["params"]))


# ----------------------------------------------------------------------------- shapes

SHAPE_CASES = [
    ("logreg", {}, (2, 7)),
    ("logreg", {}, (2, 4, 3)),
    ("mlp", {"features": (8, 5), "dropout": 0.5}, (2, 3, 2)),
    ("mlp", {"features": ()}, (2, 6)),
]
SHAPE_CASES += [("mlp", {"features": (8, 8), "activation": act, "residual": res}, (2, 6))
                for act in ("relu", "tanh", "gelu", "silu", "identity") for res in (False, True)]
_CNN = {"features": (4, 4), "kernel_size": (3, 3), "strides": (1, 2)}
for _shape in [(2, 16), (2, 16, 3), (2, 8, 8, 3)]:
  SHAPE_CASES += [("cnn", dict(_CNN, norm=n), _shape) for n in ("none", "batch", "layer", "group")]
  SHAPE_CASES += [("cnn", dict(_CNN, pool=p), _shape) for p in ("none", "max", "avg")]
  SHAPE_CASES += [("cnn", dict(_CNN, head=h, hidden=5, dropout=0.5), _shape)
                  for h in ("flatten", "avg")]
  SHAPE_CASES += [("cnn", dict(_CNN, padding=p), _shape) for p in ("same", "valid", "0", "2")]
  SHAPE_CASES += [("resnet", {"stage_sizes": (1, 1), "width": 4, "norm": n, "preact": pre}, _shape)
                  for n in ("batch", "layer", "group", "none") for pre in (False, True)]
SHAPE_CASES += [("cnn", {}, (2, 40))]
# Two layers on (B, T, F) input for some output modes, one layer on (B, T) for the others.
SHAPE_CASES += [("rnn", {"cell": c, "hidden": 3, "layers": 1 + deep, "bidirectional": bi,
                         "output": o}, (2, 5, 3) if deep else (2, 5))
                for c in ("rnn", "lstm", "gru") for bi in (False, True)
                for o, deep in (("all", 0), ("last", 1), ("mean", 0), ("sequence", 1))]
SHAPE_CASES += [("rnn", {"hidden": 3, "layers": 2, "dropout": 0.5, "output": o}, (2, 5))
                for o in ("last", "sequence")]


def _train_matters(name, kwargs):
  return name == "resnet" or kwargs.get("dropout") or kwargs.get("norm") == "batch"


@pytest.mark.parametrize("name,kwargs,shape", SHAPE_CASES)
def test_output_shape(name, kwargs, shape):
  model = nets.create(name, num_outputs=3, **kwargs)
  expected = (shape[0], shape[1], 3) if kwargs.get("output") == "sequence" else (shape[0], 3)
  assert traced(model, shape, train=True)[0] == expected
  if _train_matters(name, kwargs):
    assert traced(model, shape, train=False)[0] == expected


def test_every_model_is_covered_and_has_simple_hparams():
  token_models = {"gpt", "bert", "encoder_decoder", "rnn_lm", "wavenet"}  # shapes: their own test files
  generative = {"autoencoder", "vae", "gan_mlp", "dcgan", "ddpm_mlp", "unet"}  # likewise
  assert {c[0] for c in SHAPE_CASES} | token_models | generative == set(nets.names())
  simple = (int, float, str, bool, tuple[int, ...])
  for name in nets.names():
    fields = nets.hparams(name)
    if name not in token_models | generative:
      assert fields["num_outputs"].default == 10
    for field in fields.values():
      assert field.type in simple, (name, field.name, field.type)
      assert field.default is not dataclasses.MISSING, (name, field.name)
      if field.type == tuple[int, ...]:
        assert isinstance(field.default, tuple)


def test_dropout_only_in_train_mode():
  x = randn(4, 6)
  for model in (nets.create("mlp", features=(16,), dropout=0.5),
                nets.create("cnn", features=(4,), kernel_size=(3,), strides=(1,), dropout=0.5)):
    variables = random_variables(model, x)
    run = jax.jit(lambda train, seed, m=model, v=variables: m.apply(
        v, x, train=train, rngs={"dropout": jax.random.key(seed)}), static_argnums=0)
    np.testing.assert_array_equal(run(False, 0), run(False, 1))
    assert not np.allclose(run(True, 0), run(True, 1))


# ---------------------------------------------------------- MNIST-1D paper parameter counts


@pytest.mark.parametrize("name,kwargs,expected", [
    ("logreg", {}, 410),
    ("mlp", {"features": (100, 100), "residual": True, "activation": "relu"}, 15_210),
    ("cnn", {}, 5_210),
    ("rnn", {"cell": "gru", "hidden": 6, "bidirectional": True, "output": "all"}, 5_134),
])
def test_paper_parameter_counts(name, kwargs, expected):
  _, variables = traced(nets.create(name, num_outputs=10, **kwargs), (2, 40))
  assert num_params(variables) == expected


def test_paper_cnn_layer_shapes():
  _, variables = traced(nets.create("cnn"), (2, 40))
  shapes = jax.tree_util.tree_map(lambda p: p.shape, variables["params"])
  assert [shapes[f"Conv_{i}"]["kernel"] for i in range(3)] == [(5, 1, 25), (3, 25, 25), (3, 25, 25)]
  assert shapes["Dense_0"]["kernel"] == (125, 10)


def test_paper_gru_matches_pytorch_sizes():
  _, variables = traced(nets.create("rnn"), (2, 40))
  params = variables["params"]
  for direction in ("forward", "backward"):
    assert num_params({"params": params["layer0"][direction]}) == 162
  assert params["head"]["kernel"].shape == (480, 10)


def test_residual_mlp_is_the_paper_mlp():
  model = nets.create("mlp", features=(100, 100), residual=True)
  x = randn(3, 40)
  variables = random_variables(model, x)
  p = variables["params"]
  relu = lambda v: np.maximum(v, 0)
  dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]
  h = relu(dense("Dense_0", x))
  h = h + relu(dense("Dense_1", h))
  np.testing.assert_allclose(model.apply(variables, x), dense("Dense_2", h), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ cells against PyTorch's equations


def sigmoid(v):
  return 1 / (1 + np.exp(-v))


def torch_weights(params):
  """PyTorch-layout weights (weight_ih, weight_hh, bias_ih, bias_hh) from a cell's params."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  return p["ih"]["kernel"].T, p["hh"]["kernel"].T, p["ih"]["bias"], p["hh"]["bias"]


def reference_step(cell, params, carry, x):
  """One step of PyTorch's RNN / LSTM / GRU equations; returns (carry, output)."""
  w_ih, w_hh, b_ih, b_hh = torch_weights(params)
  if cell == "rnn":
    h = np.tanh(x @ w_ih.T + b_ih + carry @ w_hh.T + b_hh)
    return h, h
  if cell == "lstm":
    c, h = carry
    w_ii, w_if, w_ig, w_io = np.split(w_ih, 4)
    w_hi, w_hf, w_hg, w_ho = np.split(w_hh, 4)
    b_ii, b_if, b_ig, b_io = np.split(b_ih, 4)
    b_hi, b_hf, b_hg, b_ho = np.split(b_hh, 4)
    i = sigmoid(x @ w_ii.T + b_ii + h @ w_hi.T + b_hi)
    f = sigmoid(x @ w_if.T + b_if + h @ w_hf.T + b_hf)
    g = np.tanh(x @ w_ig.T + b_ig + h @ w_hg.T + b_hg)
    o = sigmoid(x @ w_io.T + b_io + h @ w_ho.T + b_ho)
    c = f * c + i * g
    h = o * np.tanh(c)
    return (c, h), h
  h = carry
  w_ir, w_iz, w_in = np.split(w_ih, 3)
  w_hr, w_hz, w_hn = np.split(w_hh, 3)
  b_ir, b_iz, b_in = np.split(b_ih, 3)
  b_hr, b_hz, b_hn = np.split(b_hh, 3)
  r = sigmoid(x @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
  z = sigmoid(x @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
  n = np.tanh(x @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
  h = (1 - z) * n + z * h
  return h, h


def reference_sequence(cell, params, x, hidden, reverse=False):
  """A cell run over (B, T, F) from a zero state; outputs in input order."""
  batch, steps, _ = x.shape
  zeros = np.zeros((batch, hidden))
  carry = (zeros, zeros) if cell == "lstm" else zeros
  outputs = [None] * steps
  for t in (reversed(range(steps)) if reverse else range(steps)):
    carry, outputs[t] = reference_step(cell, params, carry, x[:, t])
  return np.stack(outputs, axis=1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_one_step_matches_pytorch_equations(cell):
  hidden, features = 4, 3
  module = rnn_lib.CELLS[cell](hidden)
  x = randn(2, features)
  h = randn(2, hidden, seed=1)
  carry = (randn(2, hidden, seed=2), h) if cell == "lstm" else h
  variables = random_variables(module, carry, x)
  assert num_params(variables) == rnn_lib.CELLS[cell].gates * hidden * (features + hidden + 2)
  new_carry, out = module.apply(variables, carry, x)
  ref_carry, ref_out = reference_step(cell, variables["params"], carry, x)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         new_carry, ref_carry)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_sequence_matches_pytorch_equations(cell, bidirectional):
  hidden = 4
  layer = rnn_lib.RNNLayer(cell, hidden, bidirectional)
  x = randn(2, 5, 3)
  variables = random_variables(layer, x)
  out = np.asarray(layer.apply(variables, x))
  params, xs = variables["params"], x.astype(np.float64)
  ref = reference_sequence(cell, params["forward"], xs, hidden)
  if bidirectional:
    ref = np.concatenate([ref, reference_sequence(cell, params["backward"], xs, hidden, True)], -1)
  assert out.shape == (2, 5, hidden * (2 if bidirectional else 1))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output", ["all", "last", "mean", "sequence"])
def test_gru_model_matches_reference(output):
  hidden, steps = 6, 8
  model = nets.create("rnn", output=output)
  x = randn(3, steps)
  variables = random_variables(model, x)
  params = variables["params"]
  xs = x.astype(np.float64)[..., None]
  layer = params["layer0"]
  seq = np.concatenate([reference_sequence("gru", layer["forward"], xs, hidden),
                        reference_sequence("gru", layer["backward"], xs, hidden, True)], -1)
  features = {
      "all": seq.reshape(3, -1),  # the order of PyTorch's output.view(batch, -1)
      "last": np.concatenate([seq[:, -1, :hidden], seq[:, 0, hidden:]], -1),  # = h_n of each dir
      "mean": seq.mean(1),
      "sequence": seq,
  }[output]
  expected = features @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-4, atol=1e-5)


def test_bidirectional_ordering():
  hidden, steps = 3, 6
  layer = rnn_lib.RNNLayer("gru", hidden, bidirectional=True)
  x = jnp.asarray(randn(2, steps, 2))
  variables = random_variables(layer, x)
  apply = jax.jit(layer.apply)
  out = np.asarray(apply(variables, x))
  # The end of the sequence changes: forward outputs before it do not; every backward one does.
  changed = np.asarray(apply(variables, x.at[:, -1].add(1.0)))
  np.testing.assert_array_equal(changed[:, :-1, :hidden], out[:, :-1, :hidden])
  assert np.all(np.abs(changed[:, :, hidden:] - out[:, :, hidden:]).max(-1) > 0)
  # The start changes: backward outputs after it do not (step t has read t..T-1 only).
  changed = np.asarray(apply(variables, x.at[:, 0].add(1.0)))
  np.testing.assert_array_equal(changed[:, 1:, hidden:], out[:, 1:, hidden:])
  assert np.all(np.abs(changed[:, :, :hidden] - out[:, :, :hidden]).max(-1) > 0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_unidirectional_is_causal(cell):
  layer = rnn_lib.RNNLayer(cell, 3, bidirectional=False)
  x = jnp.asarray(randn(2, 6, 2))
  variables = random_variables(layer, x)
  apply = jax.jit(layer.apply)
  out = np.asarray(apply(variables, x))
  for t in range(6):
    changed = np.asarray(apply(variables, x.at[:, t].add(1.0)))
    np.testing.assert_array_equal(changed[:, :t], out[:, :t])
    assert np.abs(changed[:, t] - out[:, t]).max() > 0


@pytest.mark.parametrize("cell", ["rnn", "lstm"])  # the GRU is trained below
def test_rnn_gradients_under_jit(cell):
  x = randn(2, 5)
  model = nets.create("rnn", cell=cell, hidden=3, output="last")
  params = random_variables(model, x)["params"]
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0)


# ------------------------------------------------------------------------------- training


def train_losses(model, x, y, steps=60, learning_rate=1e-2):
  """Train-mode losses of `steps` Adam steps on one fixed batch; batch_stats kept up to date."""
  variables = jax.jit(model.init)(RNGS, x)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  objective = nets.objectives.Classification()
  tx = optax.adam(learning_rate)
  batch = {"x": x, "y": y}

  def loss_fn(params, state, rng):
    updates = {}

    def apply(inputs):
      logits, new_state = model.apply({"params": params, **state}, inputs, train=True,
                                      rngs={"dropout": rng}, mutable=["batch_stats"])
      updates.update(new_state)
      return logits

    loss = objective(apply, batch, rng)["loss"].mean()
    return loss, {**state, **updates}

  @jax.jit
  def step(params, state, opt_state, rng):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(steps):
    params, state, opt_state, loss = step(params, state, opt_state, jax.random.key(i))
    losses.append(float(loss))
  for before, after in zip(jax.tree_util.tree_leaves(variables.get("batch_stats", {})),
                           jax.tree_util.tree_leaves(state.get("batch_stats", {}))):
    assert not np.allclose(before, after)  # train mode updates the batch statistics
  eval_logits = jax.jit(model.apply)({"params": params, **state}, x)
  assert np.all(np.isfinite(eval_logits))
  return losses


@pytest.mark.parametrize("name,kwargs", [
    ("logreg", {}),
    ("mlp", {"features": (32, 32), "residual": True}),
    ("cnn", {"features": (8, 8), "kernel_size": (3, 3), "strides": (1, 2)}),
    ("resnet", {"stage_sizes": (1, 1), "width": 8, "norm": "batch"}),
    ("rnn", {"cell": "gru", "hidden": 8}),
])
def test_loss_decreases(name, kwargs):
  x = randn(32, 12)
  y = np.argmax(x @ randn(12, 4, seed=1), axis=-1)
  losses = train_losses(nets.create(name, num_outputs=4, **kwargs), x, y)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses[::10]


# ---------------------------------------------------------------------- bad hyperparameters


@pytest.mark.parametrize("name,kwargs,match", [
    ("mlp", {"activation": "nope"}, "MLP.activation"),
    ("cnn", {"activation": "nope"}, "CNN.activation"),
    ("cnn", {"norm": "nope"}, "CNN.norm"),
    ("cnn", {"pool": "nope"}, "CNN.pool"),
    ("cnn", {"head": "nope"}, "CNN.head"),
    ("cnn", {"padding": "full"}, "CNN.padding"),
    ("cnn", {"padding": "-1"}, "CNN.padding"),
    ("cnn", {"features": (4, 4), "kernel_size": (3,), "strides": (1, 1)}, "kernel_size"),
    ("cnn", {"strides": (1, 1)}, "strides"),
    ("mlp", {"dropout": 1.5}, "MLP.dropout"),
    ("resnet", {"norm": "nope"}, "ResNet.norm"),
    ("resnet", {"stage_sizes": (2, 0)}, "ResNet.stage_sizes"),
    ("rnn", {"cell": "nope"}, "RNN.cell"),
    ("rnn", {"output": "nope"}, "RNN.output"),
    ("rnn", {"layers": 0}, "RNN.layers"),
    ("mlp", {"nope": 1}, "no hyperparameter"),
    ("nope", {}, "unknown model"),
])
def test_bad_hyperparameters_raise(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    nets.create(name, **kwargs)


def test_too_small_input_raises():
  model = nets.create("cnn", features=(4, 4, 4), kernel_size=(3, 3, 3), strides=(1, 1, 1),
                      pool="max")
  with pytest.raises(ValueError, match="too small"):
    traced(model, (2, 4))


def test_nets_imports_neither_tensorflow_nor_absl():
  # Flax itself imports absl.logging, so for absl only nets' own imports are checked.
  code = "import nets, sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  subprocess.run([sys.executable, "-c", code], check=True)
  for path in pathlib.Path(nets.__file__).parent.glob("*.py"):
    assert not re.search(r"^\s*(import|from)\s+(absl|tensorflow)", path.read_text(), re.M), path


@pytest.mark.parametrize("name,kwargs,layer", [
    ("mlp", {"features": (100,)}, "Dense_0"),
    ("logreg", {}, "Dense_0"),
    ("cnn", {"features": (25,), "kernel_size": (5,), "strides": (2,)}, "Conv_0"),
])
def test_torch_weight_init_draws_from_pytorch_bounds(name, kwargs, layer):
  model = nets.create(name, weight_init="torch", **kwargs)
  params = model.init(jax.random.key(0), jnp.zeros((2, 40)))["params"][layer]
  fan_in = 40 if layer == "Dense_0" else 5
  bound = 1 / np.sqrt(fan_in)
  for leaf in (params["kernel"], params["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound  # uniform, bias included
  with pytest.raises(ValueError, match="weight_init"):
    nets.create(name, weight_init="xavier", **kwargs)
