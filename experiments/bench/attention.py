"""Benchmark causal attention: dense against the Sparse Transformer's strided and fixed patterns.

    python -m experiments.bench.attention [--lengths=256,512,1024,2048,4096]
        [--batch=1 --heads=4 --head_dim=32] [--summary=1] [--repeats=5] [--json=PATH]

For each length n, with block = the power of two nearest sqrt(n), it times one jitted
forward + backward pass (the gradients of sum(out * cotangent) wrt q, k and v): dense
causal attention, and strided and fixed attention by `blocked_attention`. Each computation
is compiled once and warmed up (3 calls, and at least 0.25 s); the time is the median of
--repeats runs. Memory is XLA's buffer assignment for the compiled computation
(`memory_analysis()`): temporaries + outputs + arguments, in MiB. It prints a Markdown
table; --json also appends one JSON line per (length, pattern).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time

from absl import flags
import jax
import numpy as np

from experiments import cli
from experiments.config import ConfigError
from nets import sparse_attention

_LENGTHS = flags.DEFINE_list("lengths", ["256", "512", "1024", "2048", "4096"], "Sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 32, "Features per head.")
_SUMMARY = flags.DEFINE_integer("summary", 1, "Summary positions per block of the fixed pattern (at most block).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per computation; the median is reported.")
_JSON = flags.DEFINE_string("json", "", "If set, append one JSON line per (length, pattern) to this file.")


def nearest_power_of_two(x: float) -> int:
  """The power of two nearest x (the smaller one on a tie)."""
  low = 2 ** math.floor(math.log2(x))
  return low if x - low <= 2 * low - x else 2 * low


def measure(pattern: str, shape: tuple[int, ...], block: int, summary: int, repeats: int) -> tuple[float, float]:
  """(median ms, MiB) of one jitted forward + backward pass of `pattern` attention on `shape`."""

  def loss(q, k, v, cotangent):
    out = sparse_attention.attention(q, k, v, pattern, block=block, summary=summary)
    return (out * cotangent).sum()

  rng = np.random.default_rng(0)
  args = [jax.device_put(rng.standard_normal(shape, np.float32)) for _ in range(4)]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  memory = compiled.memory_analysis()
  mib = (memory.temp_size_in_bytes + memory.output_size_in_bytes + memory.argument_size_in_bytes) / 2**20
  start, calls = time.perf_counter(), 0
  while calls < 3 or time.perf_counter() - start < 0.25:  # warm-up: the first calls run slow
    jax.block_until_ready(compiled(*args))
    calls += 1
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times), mib


def main() -> None:
  try:
    lengths = [int(n) for n in _LENGTHS.value]
  except ValueError:
    raise ConfigError(f"--lengths must be integers, got {','.join(_LENGTHS.value)}") from None
  if _REPEATS.value < 1:
    raise ConfigError(f"--repeats must be >= 1, got {_REPEATS.value}")
  blocks = {n: nearest_power_of_two(math.sqrt(n)) for n in lengths}
  for n, block in blocks.items():
    if n % block or not 1 <= _SUMMARY.value <= block:
      raise ConfigError(f"length {n} with block {block}: need a multiple of block and 1 <= --summary <= block")

  device = jax.devices()[0].device_kind
  print(f"device: {device} ({jax.default_backend()}), {os.cpu_count()} CPU cores, jax {jax.__version__}")
  print(f"batch {_BATCH.value}, heads {_HEADS.value}, head_dim {_HEAD_DIM.value}, float32; block = power of two "
        f"nearest sqrt(length); strided: local = block; fixed: summary = {_SUMMARY.value}")
  print("time: median of forward + backward (ms); memory: XLA temporaries + outputs + arguments (MiB); "
        "ratios: dense / sparse\n")
  print("| length | block | dense ms | strided ms | fixed ms | dense MiB | strided MiB | fixed MiB "
        "| time dense/strided | time dense/fixed | memory dense/strided | memory dense/fixed |")
  print("|" + "---:|" * 12)
  for n in lengths:
    block, shape = blocks[n], (_BATCH.value, n, _HEADS.value, _HEAD_DIM.value)
    ms, mib = {}, {}
    for pattern in sparse_attention.PATTERNS:
      ms[pattern], mib[pattern] = measure(pattern, shape, block, _SUMMARY.value, _REPEATS.value)
      if _JSON.value:
        with open(_JSON.value, "a") as f:
          f.write(json.dumps({"length": n, "block": block, "pattern": pattern, "summary": _SUMMARY.value,
                              "batch": _BATCH.value, "heads": _HEADS.value, "head_dim": _HEAD_DIM.value,
                              "ms": ms[pattern], "mib": mib[pattern],
                              "device": device}) + "\n")
    print(f"| {n} | {block} | {ms['dense']:.1f} | {ms['strided']:.1f} | {ms['fixed']:.1f} "
          f"| {mib['dense']:.1f} | {mib['strided']:.1f} | {mib['fixed']:.1f} "
          f"| {ms['dense'] / ms['strided']:.1f}x | {ms['dense'] / ms['fixed']:.1f}x "
          f"| {mib['dense'] / mib['strided']:.1f}x | {mib['dense'] / mib['fixed']:.1f}x |", flush=True)


if __name__ == "__main__":
  cli.run(main, __doc__)
