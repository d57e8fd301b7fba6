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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def fresh_cache(model: nn.Module, *inputs: Array, method: str | None = None) -> Any:
  """An all-zero cache for `model` (decode=True) and inputs shaped like `inputs`."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, **({"method": method} if method else {})))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def choose(logits: Array, rng: Array, temperature: float = 1.0, top_k: int = 0) -> Array:
  """Samples token ids from logits [B, V] (argmax when temperature is 0), keeping the top k."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def sample(model: nn.Module, params: Any, prompt: Array, num_tokens: int, rng: Array,
           temperature: float = 1.0, top_k: int = 0) -> Array:
  """Continues `prompt` [B, P] (P >= 1) by `num_tokens` tokens [B, num_tokens].

  `model` is a language model mapping tokens [B, T] to next-token logits [B, T, V] whose
  `decode=True` clone caches its state (`gpt`, `rnn_lm`). Jit it with the sizes static:
  `jax.jit(sample, static_argnums=(0, 3), static_argnames=("temperature", "top_k"))`.
  """
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

  def body(i, carry):
    tokens, last, cache, filled = carry
    token = choose(last, jax.random.fold_in(rng, i), temperature, top_k)
    end = length + i + 1  # tokens so far, the new one included
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, end - 1))
    if not window or length + num_tokens <= window:  # everything fits in the cache
      last, cache = run(cache, token[:, None])
      return tokens, last, cache, filled + 1
    refill = lambda: run(empty, jax.lax.dynamic_slice(tokens, (0, end - keep), (batch, keep)))
    last, cache = jax.lax.cond(filled >= window, refill, lambda: run(cache, token[:, None]))
    return tokens, last, cache, jnp.where(filled >= window, keep, filled + 1)

  tokens, *_ = jax.lax.fori_loop(0, num_tokens, body, (tokens, last, cache, jnp.asarray(length)))
  return tokens[:, length:]


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
