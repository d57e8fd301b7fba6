"""Mixed precision (--dtype=bfloat16: bfloat16 compute, float32 parameters) and rematerialised
Transformer blocks (remat=True: the same gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from conftest import train_in_process
from experiments import build, optim, train
from experiments.config import Config
from nets.apply import Apply

GPT = dict(vocab_size=11, max_len=16, num_layers=2, num_heads=2, embed_dim=16)


def _tokens(seed=0, shape=(4, 16)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 11, size=shape), jnp.int32)


@pytest.mark.parametrize("name,hparams,call", [  # BERT's blocks are the GPT's, without the causal mask
    ("gpt", dict(GPT, dropout=0.1, num_layers=1), lambda m, v, t, r: m.apply(v, t, train=True, rngs={"dropout": r})),
    ("encoder_decoder", dict(GPT, num_layers=1, num_decoder_layers=1),
     lambda m, v, t, r: m.apply(v, t, t[:, :8], train=True, rngs={"dropout": r})),
])
def test_remat_blocks_give_the_same_outputs_and_gradients(name, hparams, call):
  tokens, rng = _tokens(), jax.random.key(3)
  plain, remat = nets.create(name, **hparams), nets.create(name, **hparams, remat=True)
  variables = jax.jit(plain.init)(jax.random.key(0), tokens)
  assert jax.tree.structure(variables) == jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), tokens))

  def loss(model, params):
    return jnp.sum(call(model, {"params": params}, tokens, rng) ** 2)

  grads = lambda m: jax.jit(jax.value_and_grad(functools.partial(loss, m)))(variables["params"])
  for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  # The rematerialised backward pass recomputes the blocks: the gradient program has more ops.
  grad_ops = lambda m: str(jax.make_jaxpr(jax.grad(functools.partial(loss, m)))(variables["params"])).count("remat")
  assert grad_ops(remat) > 0 and grad_ops(plain) == 0


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
  model = nets.create("gpt", **GPT)
  tokens, rng = _tokens(), jax.random.key(1)
  batch = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
  tx = optim.optimizer("adamw", 1e-2)
  state = build.init_state(model, tx, batch, jax.random.key(0))
  step = functools.partial(train.train_step, model=model, objective=nets.objectives.LanguageModel(), tx=tx,
                           schedule=lambda s: 1e-2)
  mixed = functools.partial(step, call=build.model_call(model, Config(dtype="bfloat16"), "cpu"))
  jaxpr = str(jax.make_jaxpr(mixed)(state, batch, rng))
  assert "bf16" in jaxpr and "dot_general" in jaxpr
  assert "bf16" not in str(jax.make_jaxpr(step)(state, batch, rng))
  f32, bf16 = jax.jit(step), jax.jit(mixed)
  s32, m32 = f32(state, batch, rng)
  s16, m16 = bf16(state, batch, rng)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((s16.params, s16.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating))
  assert float(m16["train/loss"]) == pytest.approx(float(m32["train/loss"]), rel=1e-2)  # log(11) ~ 2.4, bf16 has 3 digits
  losses = []
  for _ in range(20):
    s16, m16 = bf16(s16, batch, rng)
    losses.append(float(m16["train/loss"]))
  assert losses[-1] < 0.5 * losses[0]  # it trains


class _Spy(nets.mlp.MLP):
  """An MLP that records the dtype of its input."""

  def __call__(self, x, train=False):
    _SEEN.append(x.dtype)
    return super().__call__(x, train)


_SEEN = []


def test_apply_casts_inputs_and_parameters_and_returns_float32():
  x = jnp.ones((2, 5), jnp.float32)
  spy = _Spy(features=(8,), num_outputs=3)
  params = spy.init(jax.random.key(0), x)["params"]
  _SEEN.clear()
  out = Apply(spy, params, {}, jax.random.key(0), train=False,
              call=build.model_call(spy, Config(model="mlp", dtype="bfloat16"), "cpu"))(x)
  assert _SEEN == [jnp.bfloat16] and out.dtype == jnp.float32
  assert Apply(spy, params, {}, jax.random.key(0), train=False)(x).dtype == jnp.float32 and _SEEN[-1] == jnp.float32


def test_a_bfloat16_run_trains_end_to_end(tmp_path):
  summary = train_in_process("--model=mlp", "--mlp.features=32", "--steps=200", "--batch_size=50", "--dtype=bfloat16",
                             "--log_every=100", "--eval_every=0", "--checkpoint_every=0", workdir=tmp_path)
  assert np.isfinite(summary["eval/loss"]) and summary["eval/accuracy"] > 0.3  # MNIST-1D, chance is 0.1
