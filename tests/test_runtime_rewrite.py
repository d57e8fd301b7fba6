"""experiments.runtime.rewrite with the CPU's rules: plain Flax models computed another way,
for the same values and gradients (convolutions and dense layers on rows)."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from experiments import runtime
from experiments.runtime import conv, rewrite


def _eqns(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs inside it."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple) else (value,):
        if isinstance(sub, jex.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jex.Jaxpr):
          yield from _eqns(sub)


def _loss_and_grads(apply, variables, x, rng):
  def loss(params):
    out = apply({**variables, "params": params}, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])[0]
    return jnp.sum(jnp.sin(out))
  return jax.value_and_grad(loss)(variables["params"])


@pytest.mark.parametrize("name,hparams,shape,dtype", [
    ("cnn", dict(features=(6, 5), kernel_size=(5, 3), strides=(2, 1), padding="1", num_outputs=3), (4, 40), jnp.float32),
    ("cnn", dict(features=(4, 6), kernel_size=(3, 3), strides=(2, 1), norm="batch", num_outputs=3), (4, 8, 8, 1),
     jnp.float32),
    ("gpt", dict(vocab_size=11, max_len=16, num_layers=2, num_heads=2, embed_dim=16, dropout=0.1), (4, 16), jnp.int32),
    ("gpt", dict(vocab_size=11, max_len=16, num_layers=1, num_heads=2, embed_dim=16, remat=True), (4, 16), jnp.int32),
    ("rnn_lm", dict(vocab_size=11, cell="lstm", hidden=16, layers=1), (4, 16), jnp.int32),
])
def test_the_cpu_rules_keep_values_and_gradients(name, hparams, shape, dtype):
  model = nets.create(name, **hparams)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 11, size=shape) if dtype == jnp.int32 else rng.normal(size=shape), dtype)
  variables = model.init(jax.random.key(0), x)
  rules = runtime.rules("cpu")
  fast = rewrite.rewrite(model.apply, rules)
  want = jax.jit(lambda v: _loss_and_grads(model.apply, v, x, jax.random.key(1)))(variables)
  got = jax.jit(lambda v: _loss_and_grads(fast, v, x, jax.random.key(1)))(variables)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(1.0, float(jnp.abs(w).max())))
  grad_jaxpr = jax.make_jaxpr(lambda v: _loss_and_grads(fast, v, x, jax.random.key(1)))(variables).jaxpr
  eqns = list(_eqns(grad_jaxpr))
  # Every convolution channels last (JAX's own gradients swap the batch and channel dimensions),
  # no dense layer's product on more than 2D rows.
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  assert all(e.params["dimension_numbers"] == conv._channels_last(e.invars[0].aval.ndim) for e in convs)  # pylint: disable=protected-access
  dense = [e for e in eqns if e.primitive.name == "dot_general" and not e.params["dimension_numbers"][1][0]]
  def on_rows(eqn):  # x contracts its trailing dimensions and keeps one leading one
    contract, ndim = eqn.params["dimension_numbers"][0][0], eqn.invars[0].aval.ndim
    return tuple(contract) != tuple(range(ndim - len(contract), ndim)) or ndim - len(contract) <= 1
  assert all(on_rows(e) for e in dense), [e for e in dense if not on_rows(e)]


def test_only_the_cpu_gets_the_rules():
  assert set(runtime.rules("cpu")) == {"conv_general_dilated", "dot_general"}
  assert runtime.rules("gpu") == {} and set(runtime.rules("gpu", "bfloat16")) == {"dot_general"}


def test_no_rules_is_the_function_itself():
  f = lambda x: x
  assert rewrite.rewrite(f, {}) is f
