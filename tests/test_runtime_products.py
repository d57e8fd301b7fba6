"""bfloat16 matrix products in float32 models (--matmul_dtype=bfloat16, experiments.runtime.products)."""

import functools

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import nets
from conftest import train_in_process
from experiments import build, config as config_lib, optim, train
from experiments.runtime.products import bf16_dot_general, bf16_matmuls

_ROUND = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # bfloat16 values, exactly, as float32


@pytest.mark.parametrize("x_shape,y_shape,dims", [
    ((6, 5), (5, 3), (((1,), (0,)), ((), ()))),  # x @ y
    ((5, 6), (5, 3), (((0,), (0,)), ((), ()))),  # x.T @ y: a weight gradient's layout
    ((8, 32), (8, 2), (((0,), (0,)), ((), ()))),  # the same, computed as (y.T @ x).T: fewer elements moved
    ((2, 8, 32), (2, 8, 3), (((1,), (1,)), ((0,), (0,)))),  # and batched
    ((6, 5), (3, 5), (((1,), (1,)), ((), ()))),  # x @ y.T
    ((2, 3, 4, 5), (2, 3, 6, 5), (((3,), (3,)), ((0, 1), (0, 1)))),  # attention's scores
    ((2, 6, 4, 5), (2, 4, 5, 6), (((1,), (3,)), ((0,), (0,)))),  # contraction and batch anywhere
    ((3, 4, 5), (5, 2, 4), (((1, 2), (2, 0)), ((), ()))),  # two contracting dimensions, in another order
    ((1, 7), (7, 1), (((1,), (0,)), ((), ()))),  # a dot product
])
def test_products_and_gradients_are_those_of_the_bfloat16_operands(x_shape, y_shape, dims):
  kx, ky, kg = jax.random.split(jax.random.key(0), 3)
  x, y = jax.random.normal(kx, x_shape), jax.random.normal(ky, y_shape)
  exact = lambda a, b: lax.dot_general(a, b, dims, precision="highest")  # on rounded operands: the reference
  out, vjp = jax.jit(lambda a, b: jax.vjp(lambda a, b: bf16_dot_general(a, b, dims), a, b))(x, y)
  want, want_vjp = jax.vjp(exact, _ROUND(x), _ROUND(y))
  assert out.dtype == jnp.float32 and out.shape == want.shape
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, out.shape)
  for got, expected in zip(jax.jit(vjp)(g), want_vjp(_ROUND(g))):  # the cotangent is rounded too
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out, exact(x, y), rtol=1e-6, atol=1e-6)  # the operands were rounded


def _products(jaxpr) -> list[tuple[str, ...]]:
  """The operand dtypes of every dot_general in `jaxpr` and the jaxprs inside it."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple) else (value,):
        if isinstance(sub, jex.ClosedJaxpr):
          found += _products(sub.jaxpr)
        elif isinstance(sub, jex.Jaxpr):
          found += _products(sub)
  return found


def _everywhere(w, x):
  """Products in plain code, an einsum, jit, remat, scan, fori_loop and cond."""
  h = jnp.tanh(x @ w)
  h = jax.jit(lambda h: jnp.einsum("bi,ij->bj", h, w))(h)
  h = jax.checkpoint(lambda h: jnp.sin(h @ w))(h)
  h, _ = lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h, None, length=2)
  h = lax.fori_loop(0, 2, lambda i, c: jnp.tanh(c @ w), h)
  h = lax.cond(jnp.sum(h) > -1e9, lambda c: c @ w, lambda c: -c @ w, h)
  return jnp.sum(h ** 2)


def test_every_float32_product_is_replaced_in_the_function_and_its_gradient():
  w = jax.random.normal(jax.random.key(0), (8, 8)) / 3
  x = jax.random.normal(jax.random.key(1), (4, 8))
  plain = _products(jax.make_jaxpr(jax.grad(_everywhere))(w, x).jaxpr)
  assert plain and all(p == ("float32", "float32") for p in plain)
  wrapped = bf16_matmuls(_everywhere)
  products = _products(jax.make_jaxpr(jax.grad(wrapped))(w, x).jaxpr)
  assert len(products) >= len(plain) and all(p == ("bfloat16", "bfloat16") for p in products), products
  value, grad = jax.jit(jax.value_and_grad(wrapped))(w, x)
  want_value, want_grad = jax.value_and_grad(_everywhere)(w, x)
  assert float(value) == pytest.approx(float(want_value), rel=3e-2)
  assert float(jnp.linalg.norm(grad - want_grad) / jnp.linalg.norm(want_grad)) < 3e-2
  assert float(value) != float(want_value)


def test_arguments_that_are_not_arrays_are_held_fixed():
  f = bf16_matmuls(lambda x, w, *, scale, name: {name: scale * (x @ w)})
  out = f(jnp.ones((2, 3)), jnp.ones((3, 4)), scale=2, name="y")
  np.testing.assert_array_equal(out["y"], 6 * jnp.ones((2, 4)))


GPT = dict(vocab_size=11, max_len=16, num_layers=2, num_heads=2, embed_dim=16)


@pytest.mark.parametrize("name,hparams", [
    ("gpt", GPT),
    ("gpt", dict(GPT, remat=True, dropout=0.1)),
    ("rnn_lm", dict(vocab_size=11, cell="lstm", hidden=16, layers=1)),  # a scan
])
def test_a_training_step_with_bfloat16_products(name, hparams):
  model = nets.create(name, **hparams)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, size=(4, 16)), jnp.int32)
  batch, rng = {"x": tokens[:, :-1], "y": tokens[:, 1:]}, jax.random.key(1)
  tx = optim.optimizer("adamw", 1e-2)
  state = build.init_state(model, tx, batch, jax.random.key(0))
  step = functools.partial(train.train_step, model=model, objective=nets.objectives.LanguageModel(), tx=tx,
                           schedule=lambda s: 1e-2)
  bf16 = functools.partial(step, call=bf16_matmuls(model.apply))
  products = _products(jax.make_jaxpr(bf16)(state, batch, rng).jaxpr)  # forward and backward
  assert products and all(p == ("bfloat16", "bfloat16") for p in products), products
  s32, m32 = jax.jit(step)(state, batch, rng)
  s16, m16 = jax.jit(bf16)(state, batch, rng)
  floats = [x for x in jax.tree.leaves((s16.params, s16.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert all(x.dtype == jnp.float32 for x in floats)
  assert float(m16["train/loss"]) == pytest.approx(float(m32["train/loss"]), rel=1e-2)
  assert float(m16["train/grad_norm"]) == pytest.approx(float(m32["train/grad_norm"]), rel=5e-2)


def test_a_run_with_bfloat16_products_trains_end_to_end(tmp_path):
  summary = train_in_process("--model=mlp", "--mlp.features=32", "--steps=200", "--batch_size=50",
                             "--matmul_dtype=bfloat16", "--log_every=100", "--eval_every=0",
                             "--checkpoint_every=0", workdir=tmp_path)
  assert np.isfinite(summary["eval/loss"]) and summary["eval/accuracy"] > 0.3  # MNIST-1D, chance is 0.1


def test_bfloat16_products_are_for_float32_models():
  with pytest.raises(config_lib.ConfigError, match="--matmul_dtype=bfloat16 is for float32 models"):
    config_lib.Config(dtype="bfloat16", matmul_dtype="bfloat16")
