"""Timing the training step: what `python -m experiments.bench` measures (see its docstring)."""

from __future__ import annotations

import functools
import resource
import statistics
import time
from typing import Any

from experiments import config as config_lib


def peak_matmul(n: int = 1024, repeats: int = 10) -> float:
  """GFLOP/s of the best of `repeats` jitted n x n float32 matmuls on the default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
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


def bench(config: config_lib.Config, steps: int = 50, warmup: int = 3, matmul_size: int = 1024) -> dict[str, Any]:
  """Times `steps` train steps of `config`; returns the figures described in the module docstring."""
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import data, train  # pylint: disable=g-import-not-at-top
  from experiments.parallel import DataParallel  # pylint: disable=g-import-not-at-top

  par = DataParallel(config.parallel, config.num_devices, config.mesh)
  par.check_batch_size(config.batch_size)
  source = data.load(config)
  model, objective, tx, schedule = train.build(config, source)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  abstract = jax.eval_shape(lambda: train.init_state(model, tx, source.example, init_key))
  sharding = par.state_sharding(abstract)
  state = train.init_state(model, tx, source.example, init_key, sharding)
  p_train = par.compile(functools.partial(train.train_step, model=model, objective=objective, tx=tx,
                                          schedule=schedule), sharding, returns_state=True)
  batches = data.batches(config, source)
  batch = par.put_batch(next(batches))
  t = time.perf_counter()
  compiled = p_train.lower(state, batch, step_key).compile()
  compile_s = time.perf_counter() - t
  flops = _flops(compiled) if config.parallel == "jit" else None

  for _ in range(warmup):
    state, _ = compiled(state, par.put_batch(next(batches)), step_key)
  jax.block_until_ready(state)
  step_s, input_s = [], []
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = par.put_batch(next(batches))
    jax.block_until_ready(batch)
    t1 = time.perf_counter()
    state, metrics = compiled(state, batch, step_key)
    jax.block_until_ready((state, metrics))
    t2 = time.perf_counter()
    input_s.append(t1 - t0)
    step_s.append(t2 - t1)

  # As the training loop runs: the next batch is read while earlier steps compute (JAX
  # dispatches asynchronously), against the same steps on batches already on the device.
  staged = [par.put_batch(next(batches)) for _ in range(steps)]
  jax.block_until_ready((state, staged))
  t = time.perf_counter()
  for batch in staged:
    state, _ = compiled(state, batch, step_key)
  jax.block_until_ready(state)
  compute_s = (time.perf_counter() - t) / steps
  t = time.perf_counter()
  for _ in range(steps):
    state, _ = compiled(state, par.put_batch(next(batches)), step_key)
  jax.block_until_ready(state)
  loop_s = (time.perf_counter() - t) / steps

  median_step, median_input = statistics.median(step_s), statistics.median(input_s)
  deciles = statistics.quantiles(step_s, n=10) if len(step_s) > 1 else [median_step] * 9
  peak = peak_matmul(matmul_size)
  result = {
      "model": config.model, "dataset": config.dataset, "batch_size": config.batch_size,
      "devices": par.num_devices, "platform": jax.devices()[0].platform,
      "compile_s": compile_s,
      "step_ms_median": 1e3 * median_step, "step_ms_p10": 1e3 * deciles[0], "step_ms_p90": 1e3 * deciles[-1],
      "input_ms_median": 1e3 * median_input, "input_share_unoverlapped": median_input / (median_step + median_input),
      "loop_ms_per_step": 1e3 * loop_s, "compute_ms_per_step": 1e3 * compute_s,
      "input_wait_share": max(0.0, loop_s - compute_s) / loop_s,
      "examples_per_s": config.batch_size / loop_s,
      "flops_per_step": flops, "flops_source": "XLA cost analysis of the compiled step" if flops else None,
      "gflops_per_s": flops / median_step / 1e9 if flops else None,
      "peak_matmul_gflops_per_s": peak,
      "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
  result["fraction_of_peak"] = result["gflops_per_s"] / peak if flops else None
  if source.windows is not None:
    result["tokens_per_s"] = config.batch_size * config.block_size / loop_s
  return result
