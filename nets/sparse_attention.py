"""Causal sparse attention of the Sparse Transformer (Child et al. 2019), in pure JAX.

Every pattern is causal: query q may attend key k only if k <= q. On top of that:

- "dense": every earlier key.
- "strided" (stride `block`, local window `local`, default `block`): keys with
  (q - k) % block == 0 or q - k < local. One head sees recent keys and every block-th key
  before them, so any position reaches any earlier one in two steps.
- "fixed" (block length `block`, `summary` c in [1, block]): keys in q's own block
  (k // block == q // block) and the last c "summary" positions of every earlier block
  (k % block >= block - c).

`mask` gives a pattern as an n x n boolean array and `dense_attention` applies any mask:
O(n^2) compute and memory. `blocked_attention` computes the same result without ever
forming an n x n array; with block ~ sqrt(n) its cost grows like n * sqrt(n):

- strided: each query block attends its own and the previous blocks that the local window
  reaches (n * block * (1 + ceil((local - 1) / block)) logits), and the positions of its
  column when the sequence is laid out as [n / block rows, block columns] (n * n / block).
- fixed: each query block attends its own block (n * block) and the n / block * c summary
  keys, gathered once (n * n / block * c).

The parts of a query's keys never overlap and share one softmax (one normaliser over
their concatenated logits), so the result equals masked dense attention. Arrays are
[batch, length, heads, head_dim]; logits are scaled by 1 / sqrt(head_dim) and the softmax
runs in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

PATTERNS = ("dense", "strided", "fixed")
IMPLS = ("masked", "blocked")
_MASKED = float(np.finfo(np.float32).min)  # the logit of a masked key: finite, so no NaN


def _check(pattern: str, block: int, local: int | None, summary: int) -> int | None:
  """Validates a pattern's parameters; returns the local window (`block` if None)."""
  if pattern not in PATTERNS:
    raise ValueError(f"unknown attention pattern {pattern!r}; known patterns: {', '.join(PATTERNS)}")
  if pattern == "dense":
    return local
  if block < 1:
    raise ValueError(f"pattern {pattern!r} needs block >= 1, got block={block}")
  if pattern == "strided":
    local = block if local is None else local
    if local < 1:
      raise ValueError(f"pattern 'strided' needs local >= 1, got local={local}")
  elif not 1 <= summary <= block:
    raise ValueError(f"pattern 'fixed' needs 1 <= summary <= block={block}, got summary={summary}")
  return local


def allowed(pattern: str, q_pos: ArrayLike, k_pos: ArrayLike, *, block: int, local: int | None = None,
            summary: int = 1) -> np.ndarray | jax.Array:
  """Whether query position `q_pos` may attend key position `k_pos`, broadcast elementwise.

  Positions are integer arrays (numpy, or jax ones, traced included); the result is a
  boolean array of the same kind.
  """
  local = _check(pattern, block, local, summary)
  causal = k_pos <= q_pos
  if pattern == "dense":
    return causal
  if pattern == "strided":
    return causal & (((q_pos - k_pos) % block == 0) | (q_pos - k_pos < local))
  return causal & ((k_pos // block == q_pos // block) | (k_pos % block >= block - summary))


def mask(pattern: str, length: int, *, block: int, local: int | None = None, summary: int = 1) -> np.ndarray:
  """The pattern as a boolean [query, key] array of shape [length, length]."""
  pos = np.arange(length)
  return allowed(pattern, pos[:, None], pos[None, :], block=block, local=local, summary=summary)


def _scores(spec: str, q: jax.Array, k: jax.Array) -> jax.Array:
  """Float32 logits of einsum `spec`, scaled by 1 / sqrt(head_dim)."""
  return jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])


def _joint_softmax(*logits: jax.Array) -> list[jax.Array]:
  """One softmax over the concatenated last axes of `logits`, split back into the parts."""
  splits = np.cumsum([x.shape[-1] for x in logits])[:-1]
  return jnp.split(jax.nn.softmax(jnp.concatenate(logits, axis=-1)), splits, axis=-1)


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
                    bias: jax.Array | None = None, dropout: float = 0.0,
                    dropout_rng: jax.Array | None = None, return_weights: bool = False):
  """Attention with any mask; `mask` and `bias` broadcast to [batch, heads, q_len, k_len].

  `mask` is True where a query may attend a key; queries with no such key give zeros.
  `dropout` > 0 drops attention weights (drawn from `dropout_rng`), as in training.
  With `return_weights`, returns (output, the softmax weights [batch, heads, q_len, k_len]
  before dropout).
  """
  # Heads next to the batch, [batch, heads, length, head_dim], so that both products are
  # batched matmuls over leading dimensions (XLA's CPU backend runs the [batch, length, heads,
  # head_dim] form several times slower at nanoGPT's sizes).
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
  logits = _scores("bhqd,bhkd->bhqk", q, k)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED)
  weights = probs = jax.nn.softmax(logits)
  if dropout:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout), 0.0)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
  if mask is not None:  # a query with no key gets zeros, not the mean of every value
    has_key = jnp.broadcast_to(jnp.any(mask, axis=-1), logits.shape[:-1])  # [batch, heads, q_len]
    out = jnp.where(has_key[..., None], out, 0)
    probs = jnp.where(has_key[..., None], probs, 0)
  out = jnp.swapaxes(out, 1, 2).astype(q.dtype)
  return (out, probs) if return_weights else out


def _blocks(x: jax.Array, block: int) -> jax.Array:
  """[batch, length, ...] -> [batch, length / block, block, ...]."""
  return x.reshape(x.shape[0], x.shape[1] // block, block, *x.shape[2:])


def _strided(q: jax.Array, k: jax.Array, v: jax.Array, block: int, local: int) -> jax.Array:
  """Strided pattern: a local window of whole blocks, plus the query's column."""
  qb, kb, vb = (_blocks(x, block) for x in (q, k, v))
  nb = qb.shape[1]
  reach = min(-(-(local - 1) // block), nb - 1)  # earlier blocks that the local window reaches

  def window(x):  # [b, nb, block, h, d] -> [b, nb, (reach + 1) * block, h, d]: blocks i - reach .. i
    padded = jnp.pad(x, [(0, 0), (reach, 0)] + [(0, 0)] * 3)
    return jnp.concatenate([padded[:, j:j + nb] for j in range(reach + 1)], axis=2)

  q_pos = np.arange(nb * block).reshape(nb, block, 1)
  k_pos = q_pos[:, :1] + np.arange(-reach * block, block)  # [nb, 1, window]
  near = (k_pos >= 0) & (k_pos <= q_pos) & (q_pos - k_pos < local)
  local_logits = jnp.where(near[:, None], _scores("bnqhd,bnkhd->bnhqk", qb, window(kb)), _MASKED)

  # Position r * block + c is row r, column c; keys a multiple of block behind share the column.
  rows = np.arange(nb)
  far = (rows[:, None] - rows[None, :]) * block >= local  # [query row, key row]; not in the window
  column_logits = jnp.where(far[:, None, None], _scores("brchd,bschd->brhcs", qb, kb), _MASKED)

  w_local, w_column = _joint_softmax(local_logits, column_logits)
  out = (jnp.einsum("bnhqk,bnkhd->bnqhd", w_local.astype(v.dtype), window(vb))
         + jnp.einsum("brhcs,bschd->brchd", w_column.astype(v.dtype), vb))
  return out.reshape(q.shape)


def _fixed(q: jax.Array, k: jax.Array, v: jax.Array, block: int, summary: int) -> jax.Array:
  """Fixed pattern: the query's own block, plus the summary keys of earlier blocks."""
  qb, kb, vb = (_blocks(x, block) for x in (q, k, v))
  nb = qb.shape[1]
  causal = np.tril(np.ones((block, block), bool))
  own_logits = jnp.where(causal, _scores("bnqhd,bnkhd->bnhqk", qb, kb), _MASKED)

  ks, vs = kb[:, :, block - summary:], vb[:, :, block - summary:]  # [b, nb, summary, h, d]
  earlier = np.arange(nb)[None, :] < np.arange(nb)[:, None]  # [query block, key block]
  summary_logits = jnp.where(earlier[:, None, None, :, None], _scores("bnqhd,bmshd->bnhqms", qb, ks), _MASKED)
  summary_logits = summary_logits.reshape(*summary_logits.shape[:-2], nb * summary)

  w_own, w_summary = _joint_softmax(own_logits, summary_logits)
  w_summary = w_summary.reshape(*w_summary.shape[:-1], nb, summary)
  out = (jnp.einsum("bnhqk,bnkhd->bnqhd", w_own.astype(v.dtype), vb)
         + jnp.einsum("bnhqms,bmshd->bnqhd", w_summary.astype(v.dtype), vs))
  return out.reshape(q.shape)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, pattern: str, *, block: int,
                      local: int | None = None, summary: int = 1) -> jax.Array:
  """Causal `pattern` attention in n * sqrt(n) time and memory (block ~ sqrt(n)).

  Self-attention only: q, k and v have the same length, a multiple of `block`. "dense"
  is dense_attention with a causal mask (n^2).
  """
  local = _check(pattern, block, local, summary)
  length = q.shape[1]
  if k.shape[1] != length or v.shape[1] != length:
    raise ValueError(f"blocked attention needs q, k, v of one length, got {q.shape[1]}, {k.shape[1]}, {v.shape[1]}")
  if pattern == "dense":
    pos = jnp.arange(length)  # computed in the graph, not an n x n constant
    return dense_attention(q, k, v, allowed("dense", pos[:, None], pos[None, :], block=block))
  if length % block:
    raise ValueError(f"blocked attention needs the length ({length}) to be a multiple of block ({block})")
  if pattern == "strided":
    return _strided(q, k, v, block, local)
  return _fixed(q, k, v, block, summary)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, pattern: str, *, block: int = 0,
              local: int | None = None, summary: int = 1, impl: str = "blocked") -> jax.Array:
  """Causal `pattern` attention: impl "masked" (dense_attention with `mask`) or "blocked"."""
  _check(pattern, block, local, summary)
  if impl == "masked":
    return dense_attention(q, k, v, mask(pattern, q.shape[1], block=block, local=local, summary=summary))
  if impl == "blocked":
    return blocked_attention(q, k, v, pattern, block=block, local=local, summary=summary)
  raise ValueError(f"unknown attention impl {impl!r}; known impls: {', '.join(IMPLS)}")
