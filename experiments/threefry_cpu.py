"""JAX's random draws on the CPU from one fused loop: the same bits, a large mask 5.8x faster.

Every `jax.random` draw (dropout masks, noise, latents) hashes counters with Threefry-2x32.
On the CPU, JAX lowers that hash as a rolled loop (5 iterations of 4 rounds, for compile
time), and XLA runs each iteration as its own pass writing two arrays of the draw's full
size: a dropout mask of nanoGPT's GPU-size attention ([64, 6, 256, 256]) took 409 ms on a
2-vCPU Intel Xeon. The unrolled lowering, which JAX uses on every other platform, computes
the same 20 rounds in one loop that XLA fuses with the mask's consumers (71 ms).

`unroll()` makes the CPU use that lowering for every program the process lowers after it
(`experiments.train.prepare` calls it, and `train.restore` for the sampling commands); the
bits are identical (tested). Programs with many draws compile slower (the GPU-size GPT's
steps: 7.9 -> 12.3 s). It relies on JAX internals (`jax._src`); if they move, it does
nothing and says so.
"""

from __future__ import annotations

from absl import logging

_done = False


def unroll() -> bool:
  """Registers the unrolled Threefry lowering for the CPU; returns whether it is in place."""
  global _done
  if _done:
    return True
  try:
    from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
    mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_lowering_rule,  # pylint: disable=protected-access
                           platform="cpu", inline=False)
  except Exception as e:  # pylint: disable=broad-except  (JAX internals moved: keep JAX's lowering)
    logging.warning("JAX's Threefry lowering was not found (%s); CPU random draws use JAX's rolled loop", e)
    return False
  _done = True
  return True


def applied() -> bool:
  """Whether `unroll()` has put the unrolled lowering in place in this process."""
  return _done
