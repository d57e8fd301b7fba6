"""Transformers, the recurrent language model, their objectives and cached decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from nets import decoding, objectives, transformer

VOCAB = 11
TINY_GPT = dict(vocab_size=VOCAB, max_len=16, num_layers=2, num_heads=2, embed_dim=16)


def _tokens(shape, seed=0, low=0, high=VOCAB):
  return jax.random.randint(jax.random.key(seed), shape, low, high)


def _init(model, *inputs):
  return model.init(jax.random.key(1), *inputs)["params"]


def _sharpen(params, std=0.3):
  """Weights and embeddings redrawn from N(0, std^2): a random model whose greedy choices
  vary with the context (a freshly initialised one mostly repeats a token)."""
  paths, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(9), len(paths))
  return jax.tree.unflatten(tree, [
      std * jax.random.normal(k, p.shape) if path[-1].key in ("kernel", "embedding") else p
      for k, (path, p) in zip(keys, paths)])


@pytest.mark.parametrize("name,kwargs,shape", [
    ("gpt", TINY_GPT, (2, 16, VOCAB)),
    ("gpt", {**TINY_GPT, "tie_embeddings": False, "use_bias": False}, (2, 16, VOCAB)),
    ("bert", {**TINY_GPT, "head": "mlm"}, (2, 16, VOCAB)),
    ("bert", {**TINY_GPT, "head": "classify", "num_outputs": 3, "pad_id": 0}, (2, 3)),
    ("rnn_lm", {"vocab_size": VOCAB, "hidden": 8}, (2, 16, VOCAB)),
    ("rnn_lm", {"vocab_size": VOCAB, "hidden": 8, "cell": "gru", "embed_dim": 4, "layers": 3}, (2, 16, VOCAB)),
])
def test_output_shapes(name, kwargs, shape):
  model = nets.create(name, **kwargs)
  x = _tokens((2, 16))
  assert model.apply({"params": _init(model, x)}, x).shape == shape


def test_encoder_decoder_shapes():
  model = nets.create("encoder_decoder", **TINY_GPT, num_decoder_layers=1)
  source, target = _tokens((3, 7)), _tokens((3, 12))
  params = _init(model, source)
  assert model.apply({"params": params}, source, target).shape == (3, 12, VOCAB)


def test_gpt_parameter_count_matches_nanogpt():
  # nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, 65 characters, no biases,
  # tied embeddings) prints "number of parameters: 0.80M": 795,904 without the 64 x 128
  # position embeddings, which it leaves out of its count.
  model = nets.create("gpt", vocab_size=65, max_len=64, num_layers=4, num_heads=4, embed_dim=128,
                      use_bias=False)
  params = _init(model, _tokens((1, 64)))
  assert sum(p.size for p in jax.tree.leaves(params)) - 64 * 128 == 795_904


@pytest.mark.parametrize("kwargs", [
    {},
    {"attention": "strided", "sparse_block": 4},
    {"attention": "strided", "sparse_block": 4, "sparse_impl": "masked", "sparse_local": 6},
    {"attention": "fixed", "sparse_block": 4, "sparse_summary": 2},
])
def test_gpt_is_causal(kwargs):
  model = nets.create("gpt", **TINY_GPT, **kwargs)
  x = _tokens((2, 16))
  params = _init(model, x)
  logits = model.apply({"params": params}, x)
  for t in (0, 5, 11):
    changed = x.at[:, t + 1:].set((x[:, t + 1:] + 3) % VOCAB)
    other = model.apply({"params": params}, changed)
    np.testing.assert_allclose(other[:, :t + 1], logits[:, :t + 1], atol=1e-5)
    assert not np.allclose(other[:, t + 1:], logits[:, t + 1:], atol=1e-3)


@pytest.mark.parametrize("pattern,extra", [("strided", {}), ("strided", {"sparse_local": 6}),
                                            ("fixed", {"sparse_summary": 1}), ("fixed", {"sparse_summary": 3})])
def test_sparse_gpt_blocked_equals_masked_dense(pattern, extra):
  blocked = nets.create("gpt", **TINY_GPT, attention=pattern, sparse_block=4, **extra)
  masked = blocked.clone(sparse_impl="masked")
  x = _tokens((2, 16))
  params = _init(blocked, x)
  np.testing.assert_allclose(blocked.apply({"params": params}, x), masked.apply({"params": params}, x), atol=1e-5)


def test_sparse_gpt_sees_less_than_dense():
  dense = nets.create("gpt", **{**TINY_GPT, "num_layers": 1})  # one layer: no indirect paths
  sparse = dense.clone(attention="fixed", sparse_block=4)
  x = _tokens((1, 16))
  params = _init(dense, x)
  far = x.at[:, 1].set((x[:, 1] + 1) % VOCAB)  # position 1 is no summary column of block 0
  for model, sees in ((dense, True), (sparse, False)):
    delta = model.apply({"params": params}, far)[0, 6] - model.apply({"params": params}, x)[0, 6]
    assert (np.abs(delta).max() > 1e-6) == sees


def _reference_continuation(model, params, prompt, num_tokens, rng, window):
  """Sampling by re-running the model over its whole context for every token, with the
  context rule of nets.decoding.sample (refill from max_len // 2 tokens when full) and the
  same random draws."""
  width = window or prompt.shape[1] + num_tokens
  # Causal models: padding after the context changes nothing before it, so one compiled
  # forward pass of fixed width serves every context length.
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  rows = []
  for b, row in enumerate(np.asarray(prompt)):
    seq, start = list(row), 0
    for i in range(num_tokens):
      context = seq[start:]
      logits = forward(jnp.asarray([context + [0] * (width - len(context))]))[:, len(context) - 1]
      draw = jax.random.categorical(jax.random.fold_in(rng, i), jnp.broadcast_to(
          logits, (len(prompt), logits.shape[-1])))[b]  # the batch's draw for row b
      seq.append(int(draw))
      if window and len(seq) - start > window:
        start = len(seq) - window // 2
    rows.append(seq[len(row):])
  return np.array(rows)


_sample = jax.jit(decoding.sample, static_argnums=(0, 3), static_argnames=("temperature", "top_k"))


@pytest.mark.parametrize("name,kwargs,num_tokens", [
    ("gpt", TINY_GPT, 10),  # within the context
    ("gpt", TINY_GPT, 40),  # refills the cache twice
    ("gpt", {**TINY_GPT, "attention": "strided", "sparse_block": 4}, 30),
    ("rnn_lm", {"vocab_size": VOCAB, "hidden": 8}, 30),
    ("rnn_lm", {"vocab_size": VOCAB, "hidden": 8, "cell": "gru", "embed_dim": 4}, 30),
])
def test_cached_sampling_equals_full_recomputation(name, kwargs, num_tokens):
  model = nets.create(name, **kwargs)
  prompt = _tokens((2, 3), seed=2)
  params = _init(model, _tokens((2, 16)))
  rng = jax.random.key(0)
  got = np.asarray(_sample(model, params, prompt, num_tokens, rng, temperature=1.0))
  want = _reference_continuation(model, params, prompt, num_tokens, rng, getattr(model, "max_len", 0))
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(want)) > 3  # a non-trivial continuation


@pytest.mark.parametrize("name,kwargs", [
    ("gpt", TINY_GPT),
    ("gpt", {**TINY_GPT, "attention": "fixed", "sparse_block": 4, "sparse_summary": 2}),
    ("rnn_lm", {"vocab_size": VOCAB, "hidden": 8}),
])
def test_cached_logits_equal_full_forward(name, kwargs):
  """Prefill 3 tokens, then feed one token per call: every position's logits are those of
  one forward pass over the whole sequence."""
  model = nets.create(name, **kwargs)
  tokens = _tokens((2, 16), seed=3)
  params = _init(model, tokens)
  full = model.apply({"params": params}, tokens)
  cached = model.clone(decode=True)
  cache = decoding.fresh_cache(cached, tokens[:, :1])
  pieces = []
  for chunk in [tokens[:, :3]] + [tokens[:, t:t + 1] for t in range(3, 16)]:
    logits, variables = cached.apply({"params": params, "cache": cache}, chunk, mutable=["cache"])
    cache = variables["cache"]
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)


def test_sampling_respects_top_k_and_is_seeded():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.2, 0.05]] * 2000))
  draws = decoding.choose(logits, jax.random.key(0), temperature=1.0, top_k=2)
  assert set(np.unique(draws)) == {1, 2}
  assert abs(np.mean(draws == 1) - 0.4 / 0.7) < 0.04
  np.testing.assert_array_equal(draws, decoding.choose(logits, jax.random.key(0), 1.0, 2))
  assert (decoding.choose(logits, jax.random.key(5), temperature=0.0) == 1).all()


def test_greedy_translation_equals_full_recomputation():
  model = nets.create("encoder_decoder", vocab_size=13, max_len=12, num_layers=1, num_decoder_layers=2,
                      num_heads=2, embed_dim=16)
  source = _tokens((3, 8), seed=4, low=3, high=13).at[:, 6:].set(0)
  params = _init(model, source)
  got = np.asarray(decoding.greedy_translate(model, params, source, 12, bos_id=1, eos_id=2))
  forward = jax.jit(lambda target: model.apply({"params": params}, source, target))
  target = np.ones((3, 1), np.int32)
  for t in range(12):
    logits = forward(jnp.asarray(np.pad(target, ((0, 0), (0, 12 - target.shape[1])))))  # causal decoder
    target = np.concatenate([target, np.asarray(jnp.argmax(logits[:, t], -1))[:, None]], axis=1)
  want = target[:, 1:]
  for row in want:  # after EOS the decoder emits padding
    ends = np.flatnonzero(row == 2)
    if len(ends):
      row[ends[0] + 1:] = 0
  np.testing.assert_array_equal(got, want)


def test_cached_decoder_logits_equal_full_forward():
  model = nets.create("encoder_decoder", vocab_size=13, max_len=12, num_layers=1, num_decoder_layers=2,
                      num_heads=2, embed_dim=16)
  source = _tokens((2, 8), seed=4, low=3, high=13).at[:, 6:].set(0)
  target = _tokens((2, 12), seed=5)
  params = _init(model, source)
  full = model.apply({"params": params}, source, target)
  encoded = model.apply({"params": params}, source, method="encode")
  cached = model.clone(decode=True)
  cache = decoding.fresh_cache(cached, encoded, source, target[:, :1], method="decode_tokens")
  pieces = []
  for t in range(12):
    logits, variables = cached.apply({"params": params, "cache": cache}, encoded, source, target[:, t:t + 1],
                                     method="decode_tokens", mutable=["cache"])
    cache = variables["cache"]
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)


def test_encoder_ignores_padding():
  model = nets.create("encoder_decoder", vocab_size=13, max_len=12, num_layers=1, num_decoder_layers=1,
                      num_heads=2, embed_dim=16)
  source = _tokens((2, 8), low=3, high=13).at[:, 5:].set(0)
  params = _init(model, source)
  target = _tokens((2, 6), seed=3)
  longer = jnp.concatenate([source, jnp.zeros((2, 4), jnp.int32)], axis=1)
  np.testing.assert_allclose(model.apply({"params": params}, source, target),
                             model.apply({"params": params}, longer, target), atol=1e-5)


def test_bert_padding_mask():
  model = nets.create("bert", **TINY_GPT, pad_id=0, head="classify", num_outputs=3)
  x = _tokens((2, 10), low=1).at[:, 7:].set(0)
  params = _init(model, x)
  padded = jnp.concatenate([x, jnp.zeros((2, 6), jnp.int32)], axis=1)
  np.testing.assert_allclose(model.apply({"params": params}, x), model.apply({"params": params}, padded), atol=1e-5)
  mlm = nets.create("bert", **TINY_GPT, pad_id=0)
  params = _init(mlm, x)
  np.testing.assert_allclose(mlm.apply({"params": params}, x)[:, :7],
                             mlm.apply({"params": params}, padded)[:, :7], atol=1e-5)


def test_bert_is_bidirectional():
  model = nets.create("bert", **TINY_GPT)
  x = _tokens((1, 16))
  params = _init(model, x)
  delta = model.apply({"params": params}, x.at[:, 9].set((x[:, 9] + 1) % VOCAB)) - model.apply({"params": params}, x)
  assert np.abs(delta[:, :9]).max() > 1e-6


def test_masked_lm_corruption_statistics():
  objective = objectives.MaskedLM(vocab_size=VOCAB, mask_rate=0.15)
  tokens = _tokens((4000, 40))
  inputs, chosen = objective.corrupt(tokens, jax.random.key(0))
  chosen = np.asarray(chosen, bool)
  np.testing.assert_array_equal(chosen.sum(axis=1), 6)  # round(0.15 * 40) per sequence, exactly
  changed = np.asarray(inputs != tokens)
  assert not changed[~chosen].any()  # unchosen positions are untouched
  masked = np.asarray(inputs == VOCAB)[chosen]
  kept = np.asarray(inputs == tokens)[chosen]
  assert abs(masked.mean() - 0.8) < 0.01
  # 10% random tokens, of which 1 in VOCAB happens to equal the original.
  assert abs(kept.mean() - (0.1 + 0.1 / VOCAB)) < 0.01
  assert abs((1 - masked.mean() - kept.mean()) - 0.1 * (1 - 1 / VOCAB)) < 0.01
  positions = np.flatnonzero(chosen.sum(axis=0))
  assert len(positions) == 40  # every position gets chosen sometimes


def test_masked_lm_loss_reads_only_chosen_positions():
  objective = objectives.MaskedLM(vocab_size=VOCAB)
  tokens = _tokens((3, 20))
  _, chosen = objective.corrupt(tokens, jax.random.key(7))
  seen = {}

  def apply(inputs):
    seen["inputs"] = inputs
    return jax.nn.one_hot(tokens, VOCAB + 1) * 50.0 * (1 - chosen[..., None])  # right only where unchosen

  out = objective(apply, {"x": tokens}, jax.random.key(7))
  np.testing.assert_allclose(out["loss"], np.log(VOCAB + 1), rtol=1e-5)  # uniform at every chosen position
  assert seen["inputs"].max() == VOCAB  # the mask token reached the model


def test_language_model_objective():
  tokens = _tokens((2, 9))
  batch = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
  out = objectives.LanguageModel()(lambda x: jax.nn.one_hot(batch["y"], VOCAB) * 100.0, batch, None)
  np.testing.assert_allclose(out["loss"], 0.0, atol=1e-6)
  np.testing.assert_allclose(out["accuracy"], 1.0)
  out = objectives.LanguageModel()(lambda x: jnp.zeros(x.shape + (VOCAB,)), batch, None)
  np.testing.assert_allclose(out["bits_per_token"], np.log2(VOCAB), rtol=1e-6)


def test_seq2seq_objective_masks_padding_and_decodes():
  model = nets.create("encoder_decoder", vocab_size=13, max_len=12, num_layers=1, num_decoder_layers=1,
                      num_heads=2, embed_dim=16)
  source = _tokens((2, 8), low=3, high=13)
  params = _sharpen(_init(model, source))
  target = np.asarray(decoding.greedy_translate(model, params, source, 12, 1, 2))
  objective = objectives.Seq2Seq()

  class Apply:  # what the trainer passes: bound call, module and variables
    variables = {"params": params}

    def __init__(self):
      self.model = model

    def __call__(self, *args):
      return model.apply({"params": params}, *args)

  out = objective.evaluate(Apply(), {"x": source, "y": jnp.asarray(target)}, None)
  np.testing.assert_allclose(out["exact_match"], 1.0)  # the greedy output is its own target
  np.testing.assert_allclose(out["teacher_forced_match"], 1.0)
  wrong = target.copy()
  wrong[0, 0] = (wrong[0, 0] + 1) % 13 or 3
  out = objective.evaluate(Apply(), {"x": source, "y": jnp.asarray(wrong)}, None)
  np.testing.assert_allclose(out["exact_match"], [0.0, 1.0])


@pytest.mark.parametrize("name,kwargs,objective", [
    ("gpt", TINY_GPT, objectives.LanguageModel()),
    ("gpt", {**TINY_GPT, "attention": "strided", "sparse_block": 4}, objectives.LanguageModel()),
    ("rnn_lm", {"vocab_size": VOCAB, "hidden": 16}, objectives.LanguageModel()),
    ("bert", {**TINY_GPT, "vocab_size": VOCAB + 1}, objectives.MaskedLM(vocab_size=VOCAB, mask_rate=0.3)),
])
def test_language_models_learn_a_pattern(name, kwargs, objective):
  import optax
  model = nets.create(name, **kwargs)
  seq = np.tile(np.arange(VOCAB), 4)  # 0 1 2 ... 10 0 1 ...: each token predicts the next
  starts = np.arange(8)
  tokens = jnp.asarray(np.stack([seq[s:s + 17] for s in starts]))
  batch = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
  params = _init(model, batch["x"])
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, i):
    def loss(p):
      return jnp.mean(objective(lambda x: model.apply({"params": p}, x), batch, jax.random.fold_in(
          jax.random.key(0), i))["loss"])
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  losses = []
  for i in range(150):
    params, opt_state, value = step(params, opt_state, i)
    losses.append(float(value))
  assert np.mean(losses[-10:]) < 0.7 * losses[0]


@pytest.mark.parametrize("name,kwargs,match", [
    ("gpt", {"attention": "sparse"}, "attention"),
    ("gpt", {"attention": "strided"}, "sparse_block"),
    ("gpt", {"sparse_impl": "fast"}, "sparse_impl"),
    ("gpt", {"attention_kernel": "flash"}, "attention_kernel"),
    ("gpt", {"attention_kernel": "cudnn", "dropout": 0.1}, "without dropout"),
    ("gpt", {"attention_kernel": "cudnn", "attention": "strided", "sparse_block": 4}, "dense"),
    ("gpt", {**TINY_GPT, "embed_dim": 15}, "embed_dim"),
    ("bert", {"head": "pool"}, "head"),
    ("rnn_lm", {"cell": "transformer"}, "cell"),
])
def test_bad_hyperparameters_raise(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    nets.create(name, **kwargs)


def test_gpt_rejects_sequences_longer_than_its_context():
  model = nets.create("gpt", **TINY_GPT)
  with pytest.raises(ValueError, match="max_len"):
    model.init(jax.random.key(0), _tokens((1, 17)))



def test_cudnn_attention_kernel_wants_16_bit_inputs():
  """The cuDNN kernel runs on NVIDIA GPUs (checked there: `README.md`, GPU benchmarks); here
  its model initialises (on the XLA path: same shapes) and a float32 call is refused clearly."""
  model = nets.create("gpt", **TINY_GPT, attention_kernel="cudnn")
  tokens = _tokens((2, 16))
  params = _init(nets.create("gpt", **TINY_GPT), tokens)
  assert jax.tree.map(jnp.shape, _init(model, tokens)) == jax.tree.map(jnp.shape, params)
  with pytest.raises(ValueError, match="bfloat16"):
    model.apply({"params": params}, tokens)
  # The kernel is causal self-attention only: a bidirectional layer asking for it is refused.
  layer = transformer.MultiHeadAttention(2, causal=False, kernel="cudnn")
  with pytest.raises(ValueError, match="causal=False"):
    layer.init(jax.random.key(0), jnp.ones((2, 16, 16)))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's kernel runs on NVIDIA GPUs")
def test_cudnn_attention_kernel_equals_the_xla_path():
  """In bfloat16, the fused kernel's loss, logits and gradients are those of the XLA path, both
  within bfloat16 rounding of a float32 reference. This computation, run on an H200: loss
  4.26012 both (float32: 4.26005), logits within 0.0144 / 0.0148, gradients within 0.85% of
  their norm both."""
  tokens = jax.random.randint(jax.random.key(1), (8, 256), 0, 65)
  make = lambda kernel: nets.create("gpt", vocab_size=65, max_len=256, num_layers=2, num_heads=6, embed_dim=384,
                                    attention_kernel=kernel)
  variables = make("xla").init(jax.random.key(0), tokens)

  def run(kernel, dtype):
    def loss(variables):
      logits = make(kernel).apply(jax.tree.map(lambda x: x.astype(dtype), variables), tokens).astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean(), logits
    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables)
    return value, logits, jnp.concatenate([g.ravel().astype(jnp.float32) for g in jax.tree.leaves(grads)])

  ref = run("xla", jnp.float32)
  for kernel in ("xla", "cudnn"):
    value, logits, grads = run(kernel, jnp.bfloat16)
    assert abs(value - ref[0]) < 1e-3 * ref[0], kernel
    assert jnp.abs(logits - ref[1]).max() < 0.05, kernel
    assert jnp.linalg.norm(grads - ref[2]) < 0.02 * jnp.linalg.norm(ref[2]), kernel
