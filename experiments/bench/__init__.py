"""Benchmarks: the training step of any flag file (`python -m experiments.bench`, this
package's `bench()`), attention (`experiments.bench.attention`), a table of results
(`experiments.bench.table`), how precise a language model's loss estimate is
(`experiments.bench.eval_spread`), and greedy decoding against beam search in exact match
(`experiments.bench.beams`). docs/benchmarks.md says how they are used and what they
measured."""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import time
from typing import Any

from experiments import config as config_lib
from experiments.runtime import host_memory


def matmul_kind(config: config_lib.Config) -> str:
  """The matrix product a run's model computes: operand dtypes -> result dtype."""
  if config.dtype == "bfloat16":
    return "bfloat16 x bfloat16 -> bfloat16"
  if config.matmul_dtype == "bfloat16":
    return "bfloat16 x bfloat16 -> float32"
  return "float32 x float32 -> float32"


def peak_matmul(n: int = 1024, repeats: int = 10, kind: str = "float32 x float32 -> float32") -> float:
  """GFLOP/s of the best of `repeats` jitted n x n matmuls of `kind` (`matmul_kind`) on the
  default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  operands, result = kind.split(" x ")[0], kind.split(" -> ")[1]
  a = jax.random.normal(jax.random.key(0), (n, n), operands)
  b = jax.random.normal(jax.random.key(1), (n, n), operands)
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=result))
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e9


def _flops(compiled: Any) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


MIN_ROUND_S = 0.5  # the shortest round of the loop-against-device-held-inputs comparison
MAX_ROUND_DISPATCHES = 250


def bench(config: config_lib.Config, steps: int = 50, warmup: int = 3, matmul_size: int = 1024,
          profile_dir: str = "", rounds: int = 5) -> dict[str, Any]:
  """Times about `steps` train steps of `config` as the training loop runs them (in dispatches
  of `k` steps, `--runtime.steps_per_dispatch`); returns the figures of the module docstring of
  `experiments.bench`."""
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top

  run = train.prepare(config)  # as experiments.run builds it
  par, source, feed, state, dispatcher = run.par, run.source, run.feed, run.state, run.steps
  k = dispatcher.k
  dispatcher.executable(k)
  compile_s = dispatcher.compile_s
  flops = _flops(dispatcher.executable(k)) if config.parallel.mode == "jit" else dispatcher.flops_per_step(k)
  products = dispatcher.matmul_flops_per_step(k)
  chunks = max(3, math.ceil(steps / k))  # at least 3 dispatches each way
  peak_before = peak_matmul(matmul_size, kind=matmul_kind(config))  # and after the steps: the faster (one can meet a busy core)

  step = 0

  def span():
    nonlocal step
    placed = dispatcher.span(step, k)
    step += k
    return placed

  for _ in range(max(1, math.ceil(warmup / k))):
    state, _ = dispatcher(state, span())
  jax.block_until_ready(state)
  step_s, input_s = [], []
  for _ in range(chunks):  # each dispatch waited for: its items, then its steps
    t0 = time.perf_counter()
    placed = jax.block_until_ready(span())
    t1 = time.perf_counter()
    state, metrics = dispatcher(state, placed)
    jax.block_until_ready((state, metrics))
    t2 = time.perf_counter()
    input_s.append((t1 - t0) / k)
    step_s.append((t2 - t1) / k)

  # As the training loop runs (the items of later dispatches prepared in a background thread
  # while earlier ones compute), against the same steps with every item already on the
  # device: `rounds` of each, alternating, and the fastest of each kind (noise only adds).
  # Each round long enough to see a per-dispatch cost in (tiny steps run for 0.5 s at least).
  round_chunks = max(chunks, min(MAX_ROUND_DISPATCHES, math.ceil(MIN_ROUND_S / (k * statistics.median(step_s)))))
  compute, loop = [], []
  for r in range(rounds):
    staged = [span() for _ in range(round_chunks)]
    jax.block_until_ready((state, staged))
    trace = jax.profiler.trace(profile_dir) if profile_dir and r == 0 else contextlib.nullcontext()
    with trace:
      t = time.perf_counter()
      for placed in staged:
        state, _ = dispatcher(state, placed)
      jax.block_until_ready(state)
      compute.append((time.perf_counter() - t) / (round_chunks * k))
    del staged
    with dispatcher.spans(step, [(step + i * k, k) for i in range(round_chunks)]) as prefetched:
      step += round_chunks * k
      t = time.perf_counter()
      for placed in prefetched:
        state, _ = dispatcher(state, placed)
      jax.block_until_ready(state)
      loop.append((time.perf_counter() - t) / (round_chunks * k))
  compute_s, loop_s = min(compute), min(loop)

  median_step, median_input = statistics.median(step_s), statistics.median(input_s)
  deciles = statistics.quantiles(step_s, n=10) if len(step_s) > 1 else [median_step] * 9
  peak = max(peak_before, peak_matmul(matmul_size, kind=matmul_kind(config)))
  result = {
      "model": config.model, "dataset": config.dataset, "batch_size": config.batch_size,
      "devices": par.num_devices, "platform": jax.devices()[0].platform, "dtype": config.dtype,
      "matmul_dtype": config.matmul_dtype,
      "feed": type(feed).__name__, "steps_per_dispatch": k, "timed_steps": chunks * k, "rounds": rounds,
      "steps_per_round": round_chunks * k,
      "compile_s": compile_s,
      "step_ms_median": 1e3 * median_step, "step_ms_p10": 1e3 * deciles[0], "step_ms_p90": 1e3 * deciles[-1],
      "input_ms_median": 1e3 * median_input, "input_share_unoverlapped": median_input / (median_step + median_input),
      "loop_ms_per_step": 1e3 * loop_s, "compute_ms_per_step": 1e3 * compute_s,
      "input_wait_share": max(0.0, loop_s - compute_s) / loop_s,
      "examples_per_s": config.batch_size / loop_s,
      "flops_per_step": flops, "flops_source": "XLA cost analysis of the compiled step" if flops else None,
      "gflops_per_s": flops / median_step / 1e9 if flops else None,
      "peak_matmul_gflops_per_s": peak, "peak_matmul_kind": matmul_kind(config),
      "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "host_memory_kept": host_memory.applied(),
      "huge_pages": host_memory.huge_pages(),
      "grad_accum_steps": config.grad_accum_steps,
      # XLA's temporaries of a dispatch (activations, gradients...), beyond its arguments and outputs
      "step_temp_mb": (dispatcher.executable(k).memory_analysis().temp_size_in_bytes / 2**20
                       if config.parallel.mode == "jit" else None),
  }
  result["fraction_of_peak"] = result["gflops_per_s"] / peak if flops else None
  products_rate = products / median_step / 1e9
  result.update(matmul_flops_per_step=products, matmul_gflops_per_s=products_rate,
                matmul_fraction_of_peak=products_rate / peak)
  if source.windows is not None:
    result["tokens_per_s"] = config.batch_size * config.block_size / loop_s
  return result
