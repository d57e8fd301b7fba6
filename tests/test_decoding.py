"""Decoding options: nucleus (top-p), min-p, the repetition penalty, and beam search."""

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

import nets
from nets import decoding

from conftest import run_cli
from experiments.config import ConfigError

VOCAB = 11
TINY_GPT = dict(vocab_size=VOCAB, max_len=16, num_layers=2, num_heads=2, embed_dim=16)
TINY_RNN = dict(vocab_size=VOCAB, hidden=8)
TINY_SEQ2SEQ = dict(vocab_size=13, max_len=12, num_layers=1, num_decoder_layers=2, num_heads=2, embed_dim=16)
OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")

_sample = jax.jit(decoding.sample, static_argnums=(0, 3), static_argnames=OPTIONS)
_beam = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4), static_argnames=("length_penalty", "eos_id", "pad_id"))
_beam_translate = jax.jit(decoding.beam_translate, static_argnums=(0, 3, 4, 5, 6), static_argnames=("length_penalty",))


def _tokens(shape, seed=0, low=0, high=VOCAB):
  return jax.random.randint(jax.random.key(seed), shape, low, high)


def _sharpened(model, *inputs, std=0.3):
  """Parameters with weights and embeddings drawn from N(0, std^2): a random model whose
  choices vary with the context (a freshly initialised one mostly repeats a token)."""
  params = model.init(jax.random.key(1), *inputs)["params"]
  paths, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(9), len(paths))
  return jax.tree.unflatten(tree, [
      std * jax.random.normal(k, p.shape) if path[-1].key in ("kernel", "embedding") else p
      for k, (path, p) in zip(keys, paths)])


def _lm(name):
  model = nets.create(name, **(TINY_GPT if name == "gpt" else TINY_RNN))
  return model, _sharpened(model, _tokens((2, 16)))


PROBS = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.2, 0.05]] * 4000))


def _chosen(**options):
  return np.asarray(decoding.choose(PROBS, jax.random.key(3), 1.0, **options))


def test_nucleus_and_min_p_keep_the_likely_tokens():
  assert set(np.unique(_chosen(top_p=0.65))) == {1, 2}  # 0.4 < 0.65 <= 0.4 + 0.3
  assert set(np.unique(_chosen(top_p=0.75))) == {1, 2, 3}
  assert set(np.unique(_chosen(top_p=0.3))) == {1}
  draws = _chosen(min_p=0.6)  # p >= 0.24
  assert set(np.unique(draws)) == {1, 2} and abs(np.mean(draws == 1) - 0.4 / 0.7) < 0.04
  assert set(np.unique(_chosen(min_p=0.45))) == {1, 2, 3}  # p >= 0.18
  assert set(np.unique(_chosen(top_k=3, top_p=0.5))) == {1, 2}


@pytest.mark.parametrize("name", ["gpt", "rnn_lm"])
def test_neutral_options_equal_plain_sampling_and_tiny_top_p_is_greedy(name):
  model, params = _lm(name)
  prompt = _tokens((3, 3), seed=2)
  plain = np.asarray(_sample(model, params, prompt, 12, jax.random.key(0), temperature=1.0))
  assert len(np.unique(plain)) > 3  # a varied continuation
  for neutral in ({"top_p": 1.0}, {"min_p": 0.0}, {"repetition_penalty": 1.0}):
    np.testing.assert_array_equal(_sample(model, params, prompt, 12, jax.random.key(0), temperature=1.0, **neutral),
                                  plain)
  greedy = np.asarray(_sample(model, params, prompt, 12, jax.random.key(0), temperature=0.0))
  for seed in (0, 1):
    np.testing.assert_array_equal(
        _sample(model, params, prompt, 12, jax.random.key(seed), temperature=1.0, top_p=1e-6), greedy)
  np.testing.assert_array_equal(  # min-p close to 1: only the most likely token
      _sample(model, params, prompt, 12, jax.random.key(0), temperature=1.0, min_p=0.999999), greedy)


def test_repetition_penalty():
  logits = jnp.array([[2.0, 1.0, -1.0, 0.5]])
  seen = decoding.mark(jnp.zeros((1, 4), bool), jnp.array([[0, 2]]))
  np.testing.assert_array_equal(decoding.penalize(logits, seen, 1.0), logits)
  np.testing.assert_allclose(decoding.penalize(logits, seen, 2.0), [[1.0, 1.0, -2.0, 0.5]])
  # Token 0 was seen: its chance falls from softmax(2, 1, -1, .5)[0] = 0.61 to softmax(1, 1, -2, .5)[0] = 0.38.
  rows = jnp.broadcast_to(logits, (4000, 4))
  draw = lambda penalty: np.asarray(decoding.choose(rows, jax.random.key(4), 1.0, repetition_penalty=penalty,
                                                    seen=jnp.broadcast_to(seen, rows.shape)))
  want = jax.nn.softmax(jnp.array([1.0, 1.0, -2.0, 0.5]))[0]
  assert abs(np.mean(draw(1.0) == 0) - jax.nn.softmax(logits[0])[0]) < 0.03
  assert abs(np.mean(draw(2.0) == 0) - want) < 0.03
  with pytest.raises(ValueError, match="seen"):
    decoding.choose(logits, jax.random.key(0), 1.0, repetition_penalty=2.0)


@pytest.mark.parametrize("name", ["gpt", "rnn_lm"])
def test_greedy_repetition_penalty_equals_recomputation(name):
  """Greedy decoding with the penalty: each token the argmax of the full forward pass's
  logits, penalised for every token of the prompt and of the continuation so far."""
  model, params = _lm(name)
  prompt = np.asarray(_tokens((2, 3), seed=5))
  got = np.asarray(_sample(model, params, jnp.asarray(prompt), 10, jax.random.key(0), temperature=0.0,
                           repetition_penalty=1.8))
  seqs = [list(row) for row in prompt]
  forward = jax.jit(lambda seq: model.apply({"params": params}, seq))  # causal: padding after changes nothing
  for t in range(10):
    logits = forward(jnp.asarray(np.pad(np.array(seqs), ((0, 0), (0, 9 - t)))))[:, 2 + t]
    seen = np.zeros((2, VOCAB), bool)
    for b, seq in enumerate(seqs):
      seen[b, seq] = True
    for b, token in enumerate(np.asarray(jnp.argmax(decoding.penalize(logits, jnp.asarray(seen), 1.8), -1))):
      seqs[b].append(int(token))
  want = np.array(seqs)[:, 3:]
  np.testing.assert_array_equal(got, want)
  plain = np.asarray(_sample(model, params, jnp.asarray(prompt), 10, jax.random.key(0), temperature=0.0))
  assert (got != plain).any()  # the penalty changed the continuation
  repeats = lambda rows: sum(len(r) - len(set(r)) for r in rows)
  assert repeats(got) < repeats(plain)


@pytest.mark.parametrize("bad,match", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"min_p": 1.0}, "min_p"), ({"min_p": -0.1}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"temperature": -1.0}, "temperature")])
def test_bad_sampling_options(bad, match):
  with pytest.raises(ValueError, match=match):
    decoding.choose(PROBS[:2], jax.random.key(0), **{"temperature": 1.0, **bad})


def _log_prob_lm(forward, prompt, tokens, length):
  """The log-probability of tokens[:length] after prompt, from one plain forward pass."""
  seq = jnp.asarray(np.concatenate([prompt, tokens])[None])
  logp = np.asarray(jax.nn.log_softmax(forward(seq)[0, len(prompt) - 1:-1]))
  return float(sum(logp[t, tokens[t]] for t in range(length)))


@pytest.mark.parametrize("name", ["gpt", "rnn_lm"])
def test_language_model_beam_search(name):
  model, params = _lm(name)
  prompt = _tokens((3, 3), seed=2)
  greedy = np.asarray(_sample(model, params, prompt, 10, jax.random.key(0), temperature=0.0))
  one = _beam(model, params, prompt, 10, 1, length_penalty=0.0)
  np.testing.assert_array_equal(one.tokens[:, 0], greedy)
  if name == "gpt":  # past the window of 16 positions: the cache refills as sample's does
    np.testing.assert_array_equal(_beam(model, params, prompt, 30, 1, length_penalty=0.0).tokens[:, 0],
                                  _sample(model, params, prompt, 30, jax.random.key(0), temperature=0.0))
  # A stop token: greedy to its first occurrence, padding (-1) after.
  eos = int(greedy[0, 4])
  stopped = np.asarray(_beam(model, params, prompt, 10, 1, length_penalty=0.0, eos_id=eos, pad_id=-1).tokens[:, 0])
  for row, want in zip(stopped, greedy):
    end = np.flatnonzero(want == eos)[0] + 1 if eos in want else 10
    np.testing.assert_array_equal(row[:end], want[:end])
    assert (row[end:] == -1).all()
  beams = _beam(model, params, prompt, 10, 4, length_penalty=0.6, eos_id=eos, pad_id=-1)
  forward = jax.jit(lambda seq: model.apply({"params": params}, seq))
  assert (np.diff(np.asarray(beams.scores), axis=1) <= 0).all()  # best first
  for b in range(3):
    for k in range(4):
      tokens, length = np.asarray(beams.tokens[b, k]), int(beams.lengths[b, k])
      want = _log_prob_lm(forward, np.asarray(prompt[b]), np.where(tokens < 0, 0, tokens), length)
      np.testing.assert_allclose(beams.log_probs[b, k], want, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(beams.scores[b, k], want / length ** 0.6, rtol=1e-4, atol=1e-4)
      assert (tokens[length:] == -1).all() and (tokens[:length - 1] != eos).all()
      assert length == 10 or tokens[length - 1] == eos
  assert (np.asarray(beams.lengths) < 10).any()  # eos ends some early


class Bigram(nn.Module):
  """A language model whose next-token log-probabilities depend on the last token only
  (the table `logp`); with decode=True it keeps a (token-free) cache as the others do."""

  vocab_size: int = 4
  decode: bool = False

  @nn.compact
  def __call__(self, tokens):
    table = self.param("logp", nn.initializers.zeros, (self.vocab_size, self.vocab_size))
    if self.decode:
      self.variable("cache", "calls", lambda: jnp.zeros((), jnp.int32))
    return table[tokens]


def test_beam_search_beats_greedy_on_a_constructed_model():
  """From 0 the likeliest token is 1 (0.5), but everything after 1 is uniform; 2 (0.4) is
  followed by 3 with probability 0.5, and 3 by 3 likewise."""
  table = np.full((4, 4), 0.25)
  table[0] = [0.001, 0.5, 0.4, 0.099]
  table[2] = table[3] = [0.1, 0.2, 0.2, 0.5]
  model, params = Bigram(), {"logp": jnp.log(jnp.asarray(table, jnp.float32))}
  prompt = jnp.zeros((2, 1), jnp.int32)
  greedy = np.asarray(_sample(model, params, prompt, 3, jax.random.key(0), temperature=0.0))
  np.testing.assert_array_equal(greedy, [[1, 0, 1]] * 2)  # (0 first of the tokens tied after 1): 0.0625
  beams = _beam(model, params, prompt, 3, 2, length_penalty=1.0)
  np.testing.assert_array_equal(beams.tokens[:, 0], [[2, 3, 3]] * 2)
  np.testing.assert_allclose(beams.log_probs[:, 0], np.log(0.4 * 0.5 * 0.5), rtol=1e-5)
  assert (beams.log_probs[:, 0] > np.log(0.5 * 0.25 * 0.5) + 0.4).all()
  # With eos = 0, "1 0" (log 0.125, 2 tokens) ends; "2 3 3" (log 0.1, 3 tokens) is longer:
  # a length penalty of 0 prefers the short one, a large one the long one.
  short = _beam(model, params, prompt, 3, 2, length_penalty=0.0, eos_id=0, pad_id=-1)
  np.testing.assert_array_equal(short.tokens[:, 0], [[1, 0, -1]] * 2)
  np.testing.assert_array_equal(short.lengths[:, 0], 2)
  np.testing.assert_array_equal(short.tokens[:, 1], [[2, 3, 3]] * 2)
  long = _beam(model, params, prompt, 3, 2, length_penalty=3.0, eos_id=0, pad_id=-1)
  np.testing.assert_array_equal(long.tokens[:, 0], [[2, 3, 3]] * 2)
  np.testing.assert_allclose(long.scores[:, 0], np.log(0.1) / 27, rtol=1e-5)


EOS = 5  # a token this random model emits now and then (it emits 7 mostly)


def _translation_model():
  model = nets.create("encoder_decoder", **TINY_SEQ2SEQ)
  source = _tokens((4, 8), seed=4, low=3, high=13).at[:, 6:].set(0)
  return model, _sharpened(model, source, std=1.0), source


def test_beam_translate():
  model, params, source = _translation_model()
  greedy = np.asarray(decoding.greedy_translate(model, params, source, 12, bos_id=1, eos_id=EOS))
  assert (greedy == EOS).any(axis=1).sum() >= 2  # some translations end within the length
  one = _beam_translate(model, params, source, 12, 1, 1, EOS, length_penalty=0.0)
  np.testing.assert_array_equal(one.tokens[:, 0], greedy)
  beams = _beam_translate(model, params, source, 12, 4, 1, EOS, length_penalty=1.0)
  forward = jax.jit(lambda target: model.apply({"params": params}, source, target))
  for k in range(4):
    target = np.asarray(beams.tokens[:, k])
    logp = jax.nn.log_softmax(forward(jnp.asarray(np.concatenate([np.ones((4, 1), np.int32), target[:, :-1]], 1))))
    picked = np.take_along_axis(np.asarray(logp), target[..., None], axis=-1)[..., 0]
    lengths = np.asarray(beams.lengths[:, k])
    want = np.array([picked[b, :lengths[b]].sum() for b in range(4)])
    np.testing.assert_allclose(beams.log_probs[:, k], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(beams.scores[:, k], want / lengths, rtol=1e-4, atol=1e-4)
    for b in range(4):
      assert (target[b, lengths[b]:] == 0).all()
      assert lengths[b] == 12 or target[b, lengths[b] - 1] == EOS
  greedy_lengths = np.array([np.flatnonzero(r == EOS)[0] + 1 if (r == EOS).any() else 12 for r in greedy])
  greedy_picked = np.take_along_axis(np.asarray(jax.nn.log_softmax(forward(jnp.asarray(
      np.concatenate([np.ones((4, 1), np.int32), greedy[:, :-1]], 1))))), greedy[..., None], -1)[..., 0]
  greedy_scores = np.array([greedy_picked[b, :greedy_lengths[b]].sum() / greedy_lengths[b] for b in range(4)])
  assert (np.asarray(beams.scores[:, 0]) >= greedy_scores - 1e-5).all()


def test_bad_beam_arguments():
  model, params = _lm("rnn_lm")
  with pytest.raises(ValueError, match="beam_size"):
    decoding.beam_search(model, params, _tokens((1, 2)), 5, 0)
  with pytest.raises(ValueError, match="length_penalty"):
    decoding.beam_search(model, params, _tokens((1, 2)), 5, 2, length_penalty=float("nan"))


@pytest.mark.parametrize("flag,match", [
    ("--beam_size=0", "--beam_size"), ("--beam_size=2 --temperature=1", "--temperature")])
def test_sample_cli_rejects_bad_options_before_loading(flag, match, tmp_path):
  proc = run_cli(f"--workdir={tmp_path / 'absent'}", *flag.split(), module="experiments.sample", check=False)
  assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr


@pytest.mark.parametrize("options,match", [
    ({"top_p": 0.0}, "--top_p"), ({"top_p": 1.5}, "--top_p"), ({"min_p": 1.0}, "--min_p"),
    ({"repetition_penalty": 0.0}, "--repetition_penalty"), ({"beam_size": 0}, "--beam_size"),
    ({"beam_size": 2, "top_p": 0.9}, "--top_p"), ({"eos": "\n"}, "--eos")])
def test_sample_options_are_checked_before_loading(options, match, tmp_path):
  from experiments import sample  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=match):
    sample.generate(str(tmp_path / "absent"), "a", 5, 0.8, 40, 0, **options)


def test_exact_match_bench_counts_greedy_as_the_trainer_does(tmp_path, tfds_dir):
  """experiments.bench.beams on a 2-step run: its greedy row is the trainer's exact_match."""
  from conftest import train_in_process  # pylint: disable=g-import-not-at-top
  from experiments.bench import beams  # pylint: disable=g-import-not-at-top
  summary = train_in_process(
      "--flagfile=experiments/flags/numbers_to_words_transformer.flags", "--train_split=train[:500]",
      "--eval_split=test[:50]", "--steps=2", "--warmup_steps=1", "--log_every=1", "--eval_every=0",
      "--checkpoint_every=2", "--eval_batch_size=50", "--encoder_decoder.num_layers=1",
      "--encoder_decoder.num_decoder_layers=1", "--encoder_decoder.embed_dim=16", workdir=tmp_path)
  rows = beams.exact_match(str(tmp_path), [None], "", [1, 2], [1.0], batch_size=50)
  assert [(r["step"], r["decoder"], r["examples"]) for r in rows] == [
      (2, "greedy", 50), (2, "beam 2, length penalty 1", 50)]
  assert rows[0]["exact_match"] == pytest.approx(summary["eval/exact_match"])
  with pytest.raises(ConfigError, match="--split"):
    beams.exact_match(str(tmp_path), [None], "dev", [1], [1.0])
