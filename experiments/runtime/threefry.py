"""JAX's random draws on the CPU from one fused loop: the same bits, a large mask 5.8x faster.

Every `jax.random` draw (dropout masks, noise, latents, and every key split or fold_in)
hashes counters with Threefry-2x32. On the CPU, JAX lowers that hash as a rolled loop (5
iterations of 4 rounds, for compile time), and XLA runs each iteration as its own pass
writing two arrays of the draw's full size: a dropout mask of nanoGPT's GPU-size attention
([64, 6, 256, 256]) took 409 ms on a 2-vCPU Intel Xeon. Unrolled, as JAX lowers it on every
other platform, the 20 rounds are one loop that XLA fuses with the mask's consumers (71 ms).

`unroll()` makes the CPU use the unrolled hash for every program the process lowers after it
(`experiments.train.prepare` calls it, and `train.restore` for the sampling commands); the
bits are identical (tested). The hash is written here as StableHLO ops directly: JAX's own
unrolled rule traces the 20 rounds through `jax.numpy` at every draw of every program,
some 12 ms a draw, which made lowering a tiny model's initialisation (a draw per parameter)
and its steps cost more than loading them from the compilation cache. Programs with many
draws compile slower unrolled (the GPU-size GPT's steps: 7.9 -> 12.3 s). It relies on JAX
internals (`jax._src`); if they move, it does nothing and says so.
"""

from __future__ import annotations

import numpy as np
from absl import logging

_done = False

# Threefry-2x32 with 20 rounds (Salmon et al. 2011), as jax._src.random.threefry2x32 computes it.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _lowering(ctx, k1, k2, x1, x2):
  """The unrolled hash of counters x1, x2 under key (k1, k2), broadcast to the output's shape."""
  from jax.extend.mlir.dialects import stablehlo as hlo  # pylint: disable=g-import-not-at-top
  from jax.interpreters import mlir  # pylint: disable=g-import-not-at-top

  aval = ctx.avals_out[0]
  ty = mlir.ir.RankedTensorType.get(aval.shape, mlir.ir.IntegerType.get_unsigned(32))
  rank = len(aval.shape)

  def full(value, value_aval):  # numpy-style broadcast of an operand to the output's shape
    if value_aval.shape == aval.shape:
      return value
    return hlo.broadcast_in_dim(ty, value, mlir.dense_int_array(range(rank - len(value_aval.shape), rank)))

  constants = {}

  def const(c):
    if c not in constants:
      constants[c] = hlo.broadcast_in_dim(ty, mlir.ir_constant(np.uint32(c)), mlir.dense_int_array([]))
    return constants[c]

  k1, k2, x1, x2 = (full(v, a) for v, a in zip((k1, k2, x1, x2), ctx.avals_in))
  ks = (k1, k2, hlo.xor(hlo.xor(k1, k2), const(_PARITY)))
  x = [hlo.add(x1, ks[0]), hlo.add(x2, ks[1])]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x[0] = hlo.add(x[0], x[1])
      x[1] = hlo.or_(hlo.shift_left(x[1], const(r)), hlo.shift_right_logical(x[1], const(32 - r)))
      x[1] = hlo.xor(x[0], x[1])
    x[0] = hlo.add(x[0], ks[(i + 1) % 3])
    x[1] = hlo.add(hlo.add(x[1], ks[(i + 2) % 3]), const(i + 1))
  return x


def unroll() -> bool:
  """Registers the unrolled Threefry lowering for the CPU; returns whether it is in place."""
  global _done
  if _done:
    return True
  try:
    from jax._src import core  # pylint: disable=g-import-not-at-top
    from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
    jax_rule = threefry2x32._threefry2x32_lowering_rule  # pylint: disable=protected-access  (JAX's unrolled one)

    def rule(ctx, *args):
      if not core.is_constant_shape(ctx.avals_out[0].shape):  # shape-polymorphic: JAX's traced rule
        return jax_rule(ctx, *args)
      return _lowering(ctx, *args)

    mlir.register_lowering(threefry2x32.threefry2x32_p, rule, platform="cpu", inline=False)
  except Exception as e:  # pylint: disable=broad-except  (JAX internals moved: keep JAX's lowering)
    logging.warning("JAX's Threefry lowering was not found (%s); CPU random draws use JAX's rolled loop", e)
    return False
  try:  # the MLIR builders the rule calls are looked up when a program is lowered: try one now
    import jax  # pylint: disable=g-import-not-at-top
    jax.jit(lambda: jax.random.bits(jax.random.key(0), (3,)), backend="cpu").lower()
  except Exception as e:  # pylint: disable=broad-except
    mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_cpu_lowering_rule,  # pylint: disable=protected-access
                           platform="cpu")
    logging.warning("The unrolled Threefry lowering failed (%s); CPU random draws use JAX's rolled loop", e)
    return False
  _done = True
  return True


def applied() -> bool:
  """Whether `unroll()` has put the unrolled lowering in place in this process."""
  return _done
