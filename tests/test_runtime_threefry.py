"""threefry_cpu: the unrolled Threefry lowering on the CPU draws the very bits of JAX's own."""

import subprocess
import sys

from conftest import ROOT

# In a fresh process: draws under JAX's CPU lowering, then the same draws once unrolled.
_DRAWS = """
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from jax._src.random import threefry2x32

def hashed(k1, k2, x1, x2):  # the hash itself, its operands broadcast against each other
  return threefry2x32.threefry2x32_p.bind(k1, k2, x1, x2)

def draws(key):
  k1, k2, k3 = jax.random.split(key, 3)
  dropped = nn.Dropout(0.2).apply({}, jnp.ones((4, 37)), deterministic=False, rngs={"dropout": k3})
  return (jax.random.bits(k1, (3, 1001)), jax.random.normal(jax.random.fold_in(k2, 7), (257,)),
          jax.random.bernoulli(k2, 0.8, (5, 33)), jax.random.key_data(jax.random.split(k3, 4)), dropped)

def loops(key):  # in the draws' own program
  return jax.jit(draws).lower(key).compile().as_text().count(" while(")

key = jax.random.key(2026)
before, loops_before = jax.jit(draws)(key), loops(key)
from experiments.runtime import threefry as threefry_cpu
assert threefry_cpu.unroll() and threefry_cpu.unroll()  # a second call is harmless
jax.clear_caches()
after, loops_after = jax.jit(draws)(key), loops(key)
eager = draws(key)
for b, a, e in zip(before, after, eager):
  np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
  np.testing.assert_array_equal(np.asarray(b), np.asarray(e))

# Operands of different shapes (JAX's CPU loop cannot take them; its generic unrolled rule can):
operands = (jnp.full((1, 1), 5, jnp.uint32), jnp.full((3, 1), 11, jnp.uint32),
            jnp.arange(4, dtype=jnp.uint32)[None], jnp.arange(12, dtype=jnp.uint32).reshape(3, 4) * 7)
ours = jax.jit(hashed)(*operands)
from jax._src.interpreters import mlir
mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_lowering_rule, platform="cpu")
jax.clear_caches()
for o, j in zip(ours, jax.jit(hashed)(*operands)):
  np.testing.assert_array_equal(np.asarray(o), np.asarray(j))
print("loops", loops_before, loops_after)
"""


def test_unrolled_lowering_draws_the_same_bits_without_a_loop():
  proc = subprocess.run([sys.executable, "-c", _DRAWS], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  before, after = map(int, proc.stdout.split()[-2:])
  assert before >= 1 and after == 0  # JAX's CPU lowering loops over the rounds; ours does not
