"""WaveNet: mu-law coding, causality and the exact receptive field, and cached (Fast WaveNet) generation."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nets import registry, wavenet

SMALL = dict(vocab_size=16, residual_channels=4, skip_channels=6, dilations=(1, 2, 4, 1, 2, 4))


def _ids(shape, seed=0, vocab=16):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def _params(model, scale=1.0, seed=0):
  """Random parameters drawn with numpy (fast: no PRNG kernels to compile). Weights are N(0, scale^2 / fan_in),
  embeddings N(0, scale^2) and biases N(0, (scale / 10)^2). scale = 1 is like a fresh init; a larger one gives a
  random model whose logits move a lot with the context, so a wrong cache would change the sampled ids."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, s):
    std = {"kernel": scale / math.sqrt(math.prod(s.shape[:-1])), "embedding": scale}.get(path[-1].key, scale / 10)
    return jnp.asarray(std * rng.standard_normal(s.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_mu_law_round_trip_range_and_silence():
  x = np.linspace(-1.0, 1.0, 20001)
  ids = wavenet.mu_law_encode(x)
  assert isinstance(ids, np.ndarray) and ids.dtype == np.int32
  assert ids.min() == 0 and ids.max() == 255 and len(np.unique(ids)) == 256
  assert np.all(np.diff(ids) >= 0)  # monotone
  assert wavenet.mu_law_encode(np.array(0.0)) == 128
  back = wavenet.mu_law_decode(ids)
  assert back.dtype == np.float32
  # Half a quantisation step of F (1 / mu) times the slope of F^-1, (1 + mu |x|) ln(1 + mu) / mu, at the
  # larger end of the step: about 2% of |x| near full scale, 1e-4 near silence.
  mu = 255
  bound = (1 + mu * np.minimum(np.abs(x) * 1.03 + 2e-4, 1)) * math.log1p(mu) / mu / mu
  assert np.all(np.abs(back - x) <= bound)
  assert np.abs(back - x).max() < 0.025 and np.abs(back - x)[np.abs(x) < 0.01].max() < 1e-3
  # Every id decodes to the centre of its own cell; out-of-range audio is clipped.
  grid = np.arange(256)
  np.testing.assert_array_equal(wavenet.mu_law_encode(wavenet.mu_law_decode(grid)), grid)
  np.testing.assert_array_equal(wavenet.mu_law_encode(np.array([-3.0, 2.0])), [0, 255])


def test_mu_law_matches_the_formula_and_works_in_jax():
  x = np.array([-0.7, -0.01, 0.003, 0.25, 0.9])
  mu = 15
  companded = np.sign(x) * np.log(1 + mu * np.abs(x)) / np.log(1 + mu)
  expected = np.round((companded + 1) / 2 * mu).astype(np.int32)
  np.testing.assert_array_equal(wavenet.mu_law_encode(x, levels=16), expected)
  assert wavenet.mu_law_encode(np.array(0.0), levels=16) == 8
  jids = jax.jit(wavenet.mu_law_encode)(jnp.asarray(x))
  assert isinstance(jids, jax.Array) and jids.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(jids), wavenet.mu_law_encode(x))
  np.testing.assert_allclose(np.asarray(wavenet.mu_law_decode(jids)), wavenet.mu_law_decode(np.asarray(jids)),
                             atol=1e-6)


def test_shapes_parameters_and_registry():
  assert registry.get("wavenet") is wavenet.WaveNet
  model = registry.create("wavenet", **SMALL)
  x = _ids((2, 20))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             {"params": jax.random.key(0), "dropout": jax.random.key(0)}, x)
  assert set(variables) == {"params"}
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 20, 16)
  r, s, v, k, layers = 4, 6, 16, 2, 6
  per_layer = (k * r * 2 * r + 2 * r) + (r * r + r) + (r * s + s)
  expected = v * r + (k * r * r + r) + layers * per_layer + (s * s + s) + (s * v + v)
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == expected
  default = wavenet.WaveNet()
  assert default.dilations == tuple(2**i for i in range(10)) * 2 and default.receptive_field == 2048


@pytest.mark.parametrize("field,value", [("vocab_size", 1), ("residual_channels", 0), ("skip_channels", 0),
                                         ("dilations", ()), ("dilations", (1, 0)), ("kernel_size", 0)])
def test_invalid_fields_are_named(field, value):
  with pytest.raises(ValueError, match=f"wavenet.{field}"):
    wavenet.WaveNet(**{**SMALL, field: value})


@pytest.mark.parametrize("kernel_size,receptive_field", [(2, 16), (3, 31)])
def test_causal_with_an_exact_receptive_field(kernel_size, receptive_field):
  model = wavenet.WaveNet(**{**SMALL, "kernel_size": kernel_size})
  assert model.receptive_field == receptive_field  # 1 + (k - 1) (1 + sum of dilations)
  length, t = 40, 35
  x = _ids((1, length))
  # In float64: the oldest sample reaches the output through one chain of taps and gates only, an effect
  # of 1e-7 to 1e-4 that float32 rounding could blur; untouched outputs are bitwise equal.
  with jax.enable_x64(True):
    params = jax.tree.map(lambda p: p.astype(jnp.float64), _params(model))
    apply = jax.jit(lambda ids: model.apply({"params": params}, ids))
    base = apply(x)
    assert base.dtype == jnp.float64

    def changed(position):
      return np.abs(apply(x.at[0, position].set((x[0, position] + 5) % 16)) - base)[0]

    future = changed(t + 1)
    assert future[:t + 1].max() == 0 and future[t + 1].max() > 1e-3
    assert changed(t - receptive_field + 1)[t].max() > 1e-9  # the oldest sample it sees
    assert changed(t - receptive_field)[t].max() == 0  # just outside


def test_decode_mode_matches_the_full_model_in_any_chunks():
  model = wavenet.WaveNet(**SMALL)
  x = _ids((2, 30), seed=3)
  params = _params(model)
  full = model.apply({"params": params}, x)
  decoder = model.clone(decode=True)

  @jax.jit
  def chunked(params, x):
    shapes = jax.eval_shape(decoder.init, jax.random.key(0), x[:, :1])["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    outs, start = [], 0
    for size in (3, 1, 6, 1, 19):  # shorter and longer than the queues (1 to 4 inputs), wrapping around them
      logits, variables = decoder.apply({"params": params, "cache": cache}, x[:, start:start + size],
                                        mutable=["cache"])
      cache, start = variables["cache"], start + size
      outs.append(logits)
    return jnp.concatenate(outs, axis=1), cache

  out, cache = chunked(params, x)
  np.testing.assert_allclose(out, full, atol=1e-4, rtol=1e-4)
  assert int(cache["layer2"]["dilated"]["index"]) == 30 and cache["layer2"]["dilated"]["queue"].shape == (2, 4, 4)


def _slow_generate(model, params, rng, num_samples, prompt, temperature):
  """The reference: the full model on the whole sequence so far at every step, same keys."""
  apply = jax.jit(lambda ids: model.apply({"params": params}, ids))
  seq = np.asarray(prompt)
  total = seq.shape[1] + num_samples
  for step in range(num_samples):
    padded = np.pad(seq, ((0, 0), (0, total - seq.shape[1])))  # causal: the padding changes nothing before it
    logits = apply(padded)[:, seq.shape[1] - 1]
    token = jax.random.categorical(jax.random.fold_in(rng, step), logits / temperature)
    seq = np.concatenate([seq, np.asarray(token, np.int32)[:, None]], axis=1)
  return seq[:, prompt.shape[1]:]


@pytest.mark.parametrize("with_prompt,temperature", [(False, 1.0), (True, 0.7)])
def test_cached_generation_equals_full_recomputation(with_prompt, temperature):
  model = wavenet.WaveNet(**SMALL)
  params = _params(model, scale=1.5)
  rng, num = jax.random.key(5), 24  # more steps than the receptive field (16)
  prompt = _ids((2, 7), seed=4) if with_prompt else None
  generate = jax.jit(wavenet.generate, static_argnums=(0, 3), static_argnames=("batch",))
  out = generate(model, params, rng, num, batch=2, prompt=prompt, temperature=temperature)
  assert out.shape == (2, num) and out.dtype == jnp.int32
  reference_prompt = prompt if with_prompt else jnp.full((2, 1), 8, jnp.int32)  # default start: silence
  expected = _slow_generate(model, params, rng, num, reference_prompt, temperature)
  np.testing.assert_array_equal(np.asarray(out), expected)
  # The samples vary and follow their context (not only the random draws): the comparison has teeth.
  assert len(np.unique(expected)) > 5 and not np.array_equal(expected[0], expected[1])
  if with_prompt:
    unprompted = generate(model, params, rng, num, batch=2, temperature=temperature)
    assert np.mean(np.asarray(unprompted) != expected) > 0.3


def test_generate_jits_as_the_spine_calls_it():
  model = wavenet.WaveNet(**{**SMALL, "kernel_size": 3})
  params = _params(model, scale=1.5)
  generate = jax.jit(functools.partial(wavenet.generate, model, num_samples=12, temperature=1.0))
  out = generate(params, jax.random.key(2))
  assert out.shape == (1, 12) and int(out.min()) >= 0 and int(out.max()) < 16
  expected = _slow_generate(model, params, jax.random.key(2), 12, jnp.full((1, 1), 8, jnp.int32), 1.0)
  np.testing.assert_array_equal(np.asarray(out), expected)
  again = generate(params, jax.random.key(3))
  assert not np.array_equal(np.asarray(out), np.asarray(again))
