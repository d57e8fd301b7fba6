"""Generation in one jitted loop, with each model's state cached between tokens.

A model built with `decode=True` (the `gpt` and `rnn_lm` language models, the decoder of
`encoder_decoder`) keeps its state in the "cache" collection: keys and values of every
attention layer, or the recurrent carries. `sample` prefills the cache with the prompt and
then feeds one token per step, so each new token costs one position, not the whole prefix.

A Transformer with learned positions sees at most `max_len` tokens. When its cache is
full, `sample` refills it from the last `max_len // 2` tokens and goes on: every token is
predicted from between `max_len // 2` and `max_len` tokens of context, the positions
the model was trained on. (Re-running the whole window each token, as nanoGPT does,
costs `max_len` positions per token.)

`choose` is the one place a token is picked: the argmax (temperature 0) or a draw from the
logits after, in this order, the repetition penalty (CTRL, Keskar et al. 2019, as Hugging
Face's `repetition_penalty`), the temperature, and top-k, nucleus (top-p, Holtzman et al.
2019) and min-p filtering.

Beam search (`beam_search` for the language models, `beam_translate` for `encoder_decoder`)
keeps `beam_size` hypotheses per sequence as rows of one batch of batch * beam_size rows
(sequence b's beams are rows b * beam_size, ..., b * beam_size + beam_size - 1). Each step
extends every live hypothesis by every token, keeps the best, and reorders the model's cache
by gathering the rows of the hypotheses they extend. Hypotheses that end in `eos_id` are set
aside and ranked by log-probability / length ** length_penalty (GNMT, Wu et al. 2016, in
Hugging Face's form; length counts the generated tokens, eos included); the loop stops early
once no live hypothesis can overtake the finished ones.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
NEG = -1.0e9  # the log-probability of an empty beam: finite, so sums and ratios stay finite
# advance(state, token [rows], i) -> (next-token logits [rows, V], state): feeds token i
Advance = Callable[[Any, Array, Array], tuple[Array, Any]]


def fresh_cache(model: nn.Module, *inputs: Array, method: str | None = None) -> Any:
  """An all-zero cache for `model` (decode=True) and inputs shaped like `inputs`."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, **({"method": method} if method else {})))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def reorder(state: Any, rows: Array) -> Any:
  """`state` (a cache, or any tree of arrays with rows first) with row i taken from row
  `rows[i]`; scalars (cache positions, shared by every row) are kept."""
  return jax.tree.map(lambda x: x[rows] if x.ndim else x, state)


def check_sampling(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                   repetition_penalty: float = 1.0) -> None:
  """Raises ValueError, naming the argument and its range, for a sampling option out of range."""
  checks = [("temperature", temperature, temperature >= 0, ">= 0 (0: greedy)"),
            ("top_k", top_k, top_k >= 0, ">= 0 (0: every token)"),
            ("top_p", top_p, 0 < top_p <= 1, "in (0, 1] (1: every token)"),
            ("min_p", min_p, 0 <= min_p < 1, "in [0, 1) (0: every token)"),
            ("repetition_penalty", repetition_penalty, repetition_penalty > 0, "> 0 (1: none)")]
  for name, value, ok, allowed in checks:
    if not ok:
      raise ValueError(f"{name} must be {allowed}; got {value!r}")


def penalize(logits: Array, seen: Array, penalty: float) -> Array:
  """CTRL's repetition penalty: logits [B, V] of the tokens marked in `seen` [B, V] divided
  by `penalty` where positive and multiplied by it where negative (penalty > 1 makes them
  less likely, 1 changes nothing)."""
  return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def mark(seen: Array, tokens: Array) -> Array:
  """`seen` [B, V] with the tokens [B] or [B, T] marked."""
  tokens = tokens.reshape(tokens.shape[0], -1)
  return seen.at[jnp.arange(tokens.shape[0])[:, None], tokens].set(True)


def _nucleus(logits: Array, top_p: float) -> Array:
  """Logits outside the smallest set of most likely tokens whose probabilities sum to at
  least `top_p` set to -inf (tokens tied with the least likely kept one are kept too)."""
  probs = jax.nn.softmax(logits, axis=-1)
  ordered = -jnp.sort(-probs, axis=-1)
  before = jnp.cumsum(ordered, axis=-1) - ordered  # mass of the more likely tokens
  kept = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1: nothing comes before the first
  cutoff = jnp.take_along_axis(ordered, kept - 1, axis=-1)
  return jnp.where(probs < cutoff, -jnp.inf, logits)


def choose(logits: Array, rng: Array, temperature: float = 1.0, top_k: int = 0, *, top_p: float = 1.0,
           min_p: float = 0.0, repetition_penalty: float = 1.0, seen: Array | None = None) -> Array:
  """Token ids [B] from logits [B, V]: the argmax when temperature is 0, else a draw.

  The options are static (Python numbers). `repetition_penalty` (1: off) applies to the
  tokens marked in `seen` [B, V] (the prompt's and those generated so far; `mark`), before
  the argmax too. The draw keeps the `top_k` most likely tokens (0: all), then the nucleus
  of mass `top_p` (1: all), then the tokens at least `min_p` times as likely as the most
  likely one (0: all).
  """
  check_sampling(temperature, top_k, top_p, min_p, repetition_penalty)
  logits = logits.astype(jnp.float32)
  if repetition_penalty != 1.0:
    if seen is None:
      raise ValueError("repetition_penalty needs `seen`, the tokens [B, V] to penalise")
    logits = penalize(logits, seen, repetition_penalty)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1:
    logits = _nucleus(logits, top_p)
  if min_p > 0:
    logits = jnp.where(logits < jnp.max(logits, axis=-1, keepdims=True) + jnp.log(min_p), -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def _language_model(model: nn.Module, params: Any, prompt: Array, num_tokens: int) -> tuple[Any, Array, Advance]:
  """A language model prefilled with `prompt` [B, P]: its state, the next token's logits
  [B, V], and `advance`, which feeds generated token i (refilling a full window)."""
  model = model.clone(decode=True)
  window = getattr(model, "max_len", 0)  # 0: a recurrent model, any length
  if window:
    prompt = prompt[:, -window:]
  batch, length = prompt.shape
  if length < 1:
    raise ValueError("the prompt needs at least one token")
  keep = max(window // 2, 1)
  empty = fresh_cache(model, prompt[:, :1])

  def run(cache, tokens):
    logits, variables = model.apply({"params": params, "cache": cache}, tokens, mutable=["cache"])
    return logits[:, -1], variables["cache"]

  last, cache = run(empty, prompt)
  tokens = jnp.concatenate([prompt, jnp.zeros((batch, num_tokens), jnp.int32)], axis=1)

  def advance(state, token, i):
    tokens, cache, filled = state
    end = length + i + 1  # tokens so far, the new one included
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, end - 1))
    if not window or length + num_tokens <= window:  # everything fits in the cache
      last, cache = run(cache, token[:, None])
      return last, (tokens, cache, filled + 1)
    refill = lambda: run(empty, jax.lax.dynamic_slice(tokens, (0, end - keep), (tokens.shape[0], keep)))
    last, cache = jax.lax.cond(filled >= window, refill, lambda: run(cache, token[:, None]))
    return last, (tokens, cache, jnp.where(filled >= window, keep, filled + 1))

  return (tokens, cache, jnp.asarray(length)), last, advance


def sample(model: nn.Module, params: Any, prompt: Array, num_tokens: int, rng: Array,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
           repetition_penalty: float = 1.0) -> Array:
  """Continues `prompt` [B, P] (P >= 1) by `num_tokens` tokens [B, num_tokens].

  `model` is a language model mapping tokens [B, T] to next-token logits [B, T, V] whose
  `decode=True` clone caches its state (`gpt`, `rnn_lm`). Each token is `choose`n with the
  options given (the repetition penalty counts the whole prompt and the tokens generated).
  Jit it with the sizes and options static: `jax.jit(sample, static_argnums=(0, 3),
  static_argnames=("temperature", "top_k", "top_p", "min_p", "repetition_penalty"))`.
  """
  check_sampling(temperature, top_k, top_p, min_p, repetition_penalty)
  state, last, advance = _language_model(model, params, prompt, num_tokens)
  seen = mark(jnp.zeros(last.shape, bool), prompt)

  def body(i, carry):
    out, state, last, seen = carry
    token = choose(last, jax.random.fold_in(rng, i), temperature, top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=repetition_penalty, seen=seen)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
    last, state = advance(state, token, i)
    return out, state, last, mark(seen, token) if repetition_penalty != 1.0 else seen

  out = jnp.zeros((prompt.shape[0], num_tokens), jnp.int32)
  out, *_ = jax.lax.fori_loop(0, num_tokens, body, (out, state, last, seen))
  return out


def greedy_translate(model: nn.Module, params: Any, source: Array, length: int, bos_id: int,
                     eos_id: int) -> Array:
  """Greedy decoding of an `encoder_decoder`: source [B, S] -> target [B, length].

  The encoder runs once; the decoder caches its self-attention keys and values. After a
  sequence emits `eos_id`, its remaining positions are the model's `pad_id`.
  """
  encoded = model.apply({"params": params}, source, method="encode")
  model = model.clone(decode=True)
  first = jnp.full((source.shape[0], 1), bos_id, jnp.int32)
  cache = fresh_cache(model, encoded, source, first, method="decode_tokens")

  def body(i, carry):
    cache, token, out, done = carry
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, source, token[:, None],
                                    method="decode_tokens", mutable=["cache"])
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    token = jnp.where(done, model.pad_id, token)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
    return variables["cache"], token, out, done | (token == eos_id)

  out = jnp.zeros((source.shape[0], length), jnp.int32)
  done = jnp.zeros((source.shape[0],), bool)
  _, _, out, _ = jax.lax.fori_loop(0, length, body, (cache, first[:, 0], out, done))
  return out


class Beams(NamedTuple):
  """Beam search's hypotheses per sequence, best first."""

  tokens: Array  # [B, beam, length] the generated tokens; after eos, padding
  scores: Array  # [B, beam] log_probs / lengths ** length_penalty, what ranks them
  log_probs: Array  # [B, beam] the model's log-probability of the tokens (to eos, included)
  lengths: Array  # [B, beam] tokens generated, eos included


def check_beam(beam_size: int, length: int, length_penalty: float) -> None:
  """Raises ValueError, naming the argument, for beam search arguments out of range."""
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1; got {beam_size!r}")
  if length < 1:
    raise ValueError(f"the number of tokens to generate must be >= 1; got {length!r}")
  if not -1e6 < length_penalty < 1e6:
    raise ValueError(f"length_penalty must be a finite number; got {length_penalty!r}")


def _beam_loop(advance: Advance, state: Any, last: Array, batch: int, beam: int, length: int, eos_id: int | None,
               pad_id: int, length_penalty: float) -> Beams:
  """Beam search over a model already fed its prefix: `state` and next-token logits `last`
  of batch * beam rows (a sequence's rows alike), `advance` feeds the chosen tokens."""
  vocab = last.shape[-1]
  width = min(2 * beam, beam * vocab)  # candidates per step: at least `beam` of them do not end
  penalty = lambda lengths: jnp.asarray(lengths, jnp.float32) ** length_penalty
  first = jnp.arange(batch)[:, None]

  def take(x, index):  # x [B, n, ...] at index [B, m] -> [B, m, ...]
    return x[first, index]

  def body(carry):
    i, alive, alive_lp, state, last, done, done_lp, done_len, done_score = carry
    logp = jax.nn.log_softmax(last.astype(jnp.float32), axis=-1).reshape(batch, beam, vocab)
    top_lp, index = jax.lax.top_k((alive_lp[..., None] + logp).reshape(batch, beam * vocab), width)
    parent, token = index // vocab, (index % vocab).astype(jnp.int32)
    live = top_lp > NEG / 2  # extends a hypothesis, not an empty beam
    ends = (token == eos_id) & live if eos_id is not None else jnp.zeros_like(live)
    grown = take(alive, parent).at[:, :, i].set(token)
    # The finished: the best `beam` of those kept so far and those ending now.
    now = jnp.where(ends, top_lp / penalty(i + 1), NEG)
    done_score, pick = jax.lax.top_k(jnp.concatenate([done_score, now], axis=1), beam)
    done = take(jnp.concatenate([done, grown], axis=1), pick)
    done_lp = take(jnp.concatenate([done_lp, top_lp], axis=1), pick)
    done_len = take(jnp.concatenate([done_len, jnp.full_like(top_lp, i + 1, jnp.int32)], axis=1), pick)
    # The living: the best `beam` that do not end; the cache follows their parents.
    alive_lp, pick = jax.lax.top_k(jnp.where(ends, NEG, top_lp), beam)
    alive, parent, token = take(grown, pick), take(parent, pick), take(token, pick)
    state = reorder(state, (first * beam + parent).reshape(-1))
    last, state = advance(state, token.reshape(-1), i)
    return i + 1, alive, alive_lp, state, last, done, done_lp, done_len, done_score

  def going(carry):
    i, _, alive_lp, *_, done_score = carry
    # The best score a live hypothesis can still reach: log-probabilities only fall, and
    # its length will be between i + 1 and `length`.
    best = jnp.maximum(alive_lp / penalty(i + 1), alive_lp / penalty(length)).max(axis=1)
    settled = (done_score.min(axis=1) > NEG / 2) & (done_score.min(axis=1) >= best)
    return (i < length) & ~jnp.all(settled)

  tokens = jnp.full((batch, beam, length), pad_id, jnp.int32)
  alive_lp = jnp.full((batch, beam), NEG).at[:, 0].set(0.0)  # one hypothesis to start from
  empty = jnp.full((batch, beam), NEG)
  carry = (jnp.asarray(0), tokens, alive_lp, state, last, tokens, empty, jnp.zeros((batch, beam), jnp.int32), empty)
  i, alive, alive_lp, _, _, done, done_lp, done_len, done_score = jax.lax.while_loop(going, body, carry)
  # Hypotheses still alive at the end compete with the finished (as Hugging Face's do).
  alive_score = jnp.where(alive_lp > NEG / 2, alive_lp / penalty(i), NEG)
  scores, pick = jax.lax.top_k(jnp.concatenate([done_score, alive_score], axis=1), beam)
  both = lambda a, b: take(jnp.concatenate([a, b], axis=1), pick)
  return Beams(both(done, alive), scores, both(done_lp, alive_lp),
               both(done_len, jnp.broadcast_to(i, alive_lp.shape).astype(jnp.int32)))


def beam_search(model: nn.Module, params: Any, prompt: Array, num_tokens: int, beam_size: int,
                length_penalty: float = 1.0, eos_id: int | None = None, pad_id: int = 0) -> Beams:
  """Beam search continuing `prompt` [B, P] by up to `num_tokens` tokens with a language
  model (`gpt`, `rnn_lm`; as `sample`, whose cache and window rules it follows).

  A hypothesis ends at `eos_id` (None: every hypothesis runs `num_tokens` tokens, and the
  length penalty changes nothing); its later positions are `pad_id`. Returns `Beams`, best
  first: `tokens[:, 0]` is the answer. beam_size=1 with length_penalty=0 is greedy decoding.
  Jit it with the sizes and options static: `jax.jit(beam_search, static_argnums=(0, 3, 4),
  static_argnames=("length_penalty", "eos_id", "pad_id"))`.
  """
  check_beam(beam_size, num_tokens, length_penalty)
  batch = prompt.shape[0]
  state, last, advance = _language_model(model, params, jnp.repeat(prompt, beam_size, axis=0), num_tokens)
  return _beam_loop(advance, state, last, batch, beam_size, num_tokens, eos_id, pad_id, length_penalty)


def beam_translate(model: nn.Module, params: Any, source: Array, length: int, beam_size: int, bos_id: int,
                   eos_id: int, length_penalty: float = 1.0) -> Beams:
  """Beam search decoding of an `encoder_decoder`: source [B, S] -> `Beams` of targets
  [B, beam_size, length], best first, after eos the model's `pad_id` (as `greedy_translate`).

  The encoder runs once; its output is repeated for the beams. beam_size=1 with
  length_penalty=0 is `greedy_translate`. Jit it with the sizes and ids static:
  `jax.jit(beam_translate, static_argnums=(0, 3, 4, 5, 6), static_argnames=("length_penalty",))`.
  """
  check_beam(beam_size, length, length_penalty)
  batch = source.shape[0]
  encoded = model.apply({"params": params}, source, method="encode")
  encoded, source = (jnp.repeat(a, beam_size, axis=0) for a in (encoded, source))
  model = model.clone(decode=True)
  first = jnp.full((batch * beam_size,), bos_id, jnp.int32)
  cache = fresh_cache(model, encoded, source, first[:, None], method="decode_tokens")

  def advance(cache, token, i):
    del i
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, source, token[:, None],
                                    method="decode_tokens", mutable=["cache"])
    return logits[:, -1], variables["cache"]

  last, cache = advance(cache, first, 0)
  return _beam_loop(advance, cache, last, batch, beam_size, length, eos_id, model.pad_id, length_penalty)
