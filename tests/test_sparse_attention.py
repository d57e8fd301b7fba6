"""Tests of sparse attention: the patterns' masks, blocked == masked, causality, memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nets import sparse_attention as sa

# (pattern, block, local, summary)
CONFIGS = [
    ("strided", 8, None, 1),
    ("strided", 8, 12, 1),
    ("strided", 8, 3, 1),
    ("fixed", 8, None, 1),
    ("fixed", 8, None, 3),
]
CONFIG_IDS = [f"{p}-b{b}-l{l}-s{s}" for p, b, l, s in CONFIGS]


def brute_force(pattern, length, block, local, summary):
  """The definition of each pattern, one (query, key) pair at a time."""
  local = block if local is None else local
  out = np.zeros((length, length), bool)
  for q in range(length):
    for k in range(q + 1):
      if pattern == "dense":
        out[q, k] = True
      elif pattern == "strided":
        out[q, k] = (q - k) % block == 0 or q - k < local
      else:
        out[q, k] = k // block == q // block or k % block >= block - summary
  return out


def qkv(length=64, batch=2, heads=2, head_dim=8, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal((batch, length, heads, head_dim), np.float32) for _ in range(3))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def run(impl, pattern, block, local, summary, q, k, v):
  return sa.attention(q, k, v, pattern, block=block, local=local, summary=summary, impl=impl)


@functools.partial(jax.jit, static_argnums=0)
def output_and_grads(attend, q, k, v, cotangent):
  """attend(q, k, v) and the gradients of sum(attend(q, k, v) * cotangent) wrt q, k, v."""
  out, vjp = jax.vjp(attend, q, k, v)
  return out, vjp(cotangent)


@pytest.mark.parametrize("pattern,length,block,local,summary", [
    ("dense", 9, 0, None, 1),
    ("strided", 16, 4, None, 1),
    ("strided", 17, 4, 2, 1),
    ("strided", 20, 3, 7, 1),
    ("strided", 12, 5, 1, 1),
    ("fixed", 16, 4, None, 1),
    ("fixed", 18, 4, None, 3),
    ("fixed", 15, 5, None, 5),
])
def test_mask_matches_definition(pattern, length, block, local, summary):
  got = sa.mask(pattern, length, block=block, local=local, summary=summary)
  np.testing.assert_array_equal(got, brute_force(pattern, length, block, local, summary))


@pytest.mark.parametrize("pattern,block,local,summary", CONFIGS, ids=CONFIG_IDS)
def test_blocked_equals_masked(pattern, block, local, summary):
  q, k, v = qkv()
  cotangent = np.random.default_rng(1).standard_normal(q.shape, np.float32)
  blocked, blocked_grads = output_and_grads(functools.partial(run, "blocked", pattern, block, local, summary),
                                            q, k, v, cotangent)
  masked, masked_grads = output_and_grads(functools.partial(run, "masked", pattern, block, local, summary),
                                          q, k, v, cotangent)
  assert blocked.shape == q.shape
  np.testing.assert_allclose(blocked, masked, atol=1e-5, rtol=0)
  for got, want in zip(blocked_grads, masked_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pattern,block,local,summary", CONFIGS, ids=CONFIG_IDS)
def test_blocked_is_causal(pattern, block, local, summary):
  q, k, v = qkv()
  q2, k2, v2 = qkv(seed=1)
  out = run("blocked", pattern, block, local, summary, q, k, v)
  for t in (0, 7, 8, 30, 62):
    later = lambda a, b: np.concatenate([a[:, :t + 1], b[:, t + 1:]], axis=1)
    changed = run("blocked", pattern, block, local, summary, later(q, q2), later(k, k2), later(v, v2))
    np.testing.assert_allclose(changed[:, :t + 1], out[:, :t + 1], atol=1e-6, rtol=0)


def test_dense_attention_gives_zeros_for_rows_without_keys():
  q, k, v = qkv(length=4)
  no_keys = np.array([[False] * 4, [True, False, False, False]] * 2)
  out, grads = output_and_grads(functools.partial(sa.dense_attention, mask=no_keys), q, k, v, np.ones_like(q))
  np.testing.assert_array_equal(out[:, 0], 0)
  np.testing.assert_allclose(out[:, 1], v[:, 0], atol=1e-6)
  assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("pattern,block,local,summary", CONFIGS, ids=CONFIG_IDS)
def test_allowed_with_traced_positions(pattern, block, local, summary):
  """A KV-cache decode step: queries cache_index .. cache_index + 3 against the whole cache."""
  max_len, step = 40, 4

  @jax.jit
  def rows(cache_index):
    return sa.allowed(pattern, (cache_index + jnp.arange(step))[:, None], jnp.arange(max_len)[None, :],
                      block=block, local=local, summary=summary)

  full = sa.mask(pattern, max_len, block=block, local=local, summary=summary)
  for cache_index in (0, 5, 16, 36):
    np.testing.assert_array_equal(rows(cache_index), full[cache_index:cache_index + step])


@pytest.mark.parametrize("call,message", [
    (lambda q: sa.attention(q, q, q, "strided", block=5), "multiple of block"),
    (lambda q: sa.attention(q, q, q, "sliding", block=8), "unknown attention pattern 'sliding'"),
    (lambda q: sa.attention(q, q, q, "fixed", block=8, impl="flash"), "unknown attention impl 'flash'"),
    (lambda q: sa.attention(q, q, q, "strided"), "needs block >= 1"),
    (lambda q: sa.attention(q, q, q, "fixed", block=8, summary=9), "1 <= summary <= block"),
    (lambda q: sa.attention(q, q, q, "strided", block=8, local=0), "local >= 1"),
    (lambda q: sa.blocked_attention(q, q[:, :32], q[:, :32], "fixed", block=8), "of one length"),
])
def test_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call(np.zeros((1, 64, 1, 8), np.float32))


def test_blocked_does_not_materialise_n_squared():
  length = 2048
  x = jax.ShapeDtypeStruct((1, length, 1, 8), jnp.float32)

  def temp_bytes(fn):
    return jax.jit(fn).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  dense = temp_bytes(functools.partial(sa.attention, pattern="dense"))
  assert dense >= length * length * 4  # the float32 logits, at least
  for pattern in ("strided", "fixed"):
    blocked = temp_bytes(functools.partial(sa.attention, pattern=pattern, block=32))
    assert blocked < dense / 4, pattern
