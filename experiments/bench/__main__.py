"""Time the real training step of any flag file.

    python -m experiments.bench --flagfile=experiments/flags/shakespeare_char_gpt_cpu.flags [--bench.steps=50]

It builds the run exactly as `experiments.run` does (data and where it is held, model,
optimizer, parallelism, steps per dispatch), compiles the training steps, runs a few warm-up
steps, then times about `--bench.steps` steps (whole dispatches of `steps_per_dispatch` steps,
at least 3 dispatches) three ways. It prints a summary and, last, one JSON line with:
- `compile_s`: lowering and compiling the training steps (from JAX's persistent compilation
  cache when an earlier run compiled them: `--runtime.compilation_cache_dir=` turns it off);
- `feed` (`Examples`, `Windows`: batches cut on the device; `Streamed`: sent from the host)
  and `steps_per_dispatch`;
- `step_ms_median`, `step_ms_p10`, `step_ms_p90`: the steps alone, per step, each dispatch
  waited for;
- `input_ms_median`, `input_share_unoverlapped`: preparing and placing a dispatch's inputs,
  per step, each waited for, and its share of step + input if nothing overlapped;
- `loop_ms_per_step`: steps run as the training loop runs them (inputs prepared in a
  background thread while earlier steps compute), and `compute_ms_per_step`: the same steps
  with every input already on the device: the fastest of `--bench.rounds` alternating rounds
  of each, a round `steps_per_round` steps (at least the timed dispatches, and at least 0.5 s
  of steps); `input_wait_share` = (loop - compute) / loop, the share of step time spent
  waiting for input;
- `examples_per_s` (and `tokens_per_s` for sequence data) at the loop's rate;
- `flops_per_step` from XLA's cost analysis of the compiled step (`flops_source` says so;
  it counts every operation XLA counts, elementwise and random-number ones too, so it is
  somewhat above the model's matmul FLOPs),
  `gflops_per_s` achieved, and `peak_matmul_gflops_per_s`: a square matmul of the kind the
  run's model computes (`peak_matmul_kind`: float32 x float32 -> float32; bfloat16 operands
  under `--dtype=bfloat16` or `--matmul_dtype=bfloat16`, which some processors run on other
  units, e.g. AMX tiles) measured here, in the same process (before and after the timed
  steps, the faster), with its fraction `fraction_of_peak`;
- `matmul_flops_per_step`: the step's matrix-product FLOPs counted from its traced program
  (`experiments/flops.py`; the same on every platform, where XLA's count leaves out
  the products a GPU runs in cuBLAS and cuDNN), `matmul_gflops_per_s` and
  `matmul_fraction_of_peak` (MFU against the measured peak);
- `peak_host_memory_mb`: the process's peak resident memory; `host_memory_kept` and
  `huge_pages`: whether freed blocks of every size stayed in the heap and whether glibc
  mapped its memory in transparent huge pages (`experiments/runtime/host_memory.py`);
- `step_temp_mb`: XLA's temporaries of one dispatch of steps (activations, gradients...:
  what `--grad_accum_steps` shrinks), beyond its arguments and outputs (jit only).
With `--bench.profile_dir=DIR` the steps timed on device-held inputs are traced with
`jax.profiler` into DIR (open it with TensorBoard's profile plugin or Perfetto).
"""

from __future__ import annotations

import json
import sys

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()  # before anything else: it may restart the program once

from absl import flags

from experiments import bench, cli
from experiments import config as config_lib

config_lib.define_flags()
flags.DEFINE_integer("bench.steps", 50, "Steps to time (after the warm-up).", lower_bound=1)
flags.DEFINE_integer("bench.warmup", 3, "Untimed steps after compilation.", lower_bound=0)
flags.DEFINE_integer("bench.rounds", 5, "Rounds of the loop-against-device-held-inputs comparison (the fastest "
                     "of each kind is reported).", lower_bound=1)
flags.DEFINE_string("bench.profile_dir", "", "Write a jax.profiler trace of the steps timed on device-held inputs "
                    "here.")
flags.DEFINE_integer("bench.matmul_size", 1024, "Side of the square matmul (of the model's kind) that measures the "
                     "peak.", lower_bound=64)
FLAGS = flags.FLAGS


def main() -> None:
  config = config_lib.from_flags(FLAGS)
  runtime.before_jax(config)
  size = FLAGS["bench.matmul_size"].value
  r = bench.bench(config, FLAGS["bench.steps"].value, FLAGS["bench.warmup"].value, size,
                  FLAGS["bench.profile_dir"].value, FLAGS["bench.rounds"].value)
  flagfiles = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--flagfile=")]
  if flagfiles:
    r["flagfile"] = flagfiles[-1].removeprefix("experiments/flags/")
  print(f"{r['model']} on {r['dataset']}, batch {r['batch_size']}, {r['devices']} {r['platform']} device(s), "
        f"{r['dtype']} (products: {r['peak_matmul_kind']}); data: {r['feed']}; {r['steps_per_dispatch']} step(s) "
        f"per dispatch, {r['timed_steps']} timed, {r['steps_per_round']} a round")
  print(f"compile {r['compile_s']:.2f} s; step {r['step_ms_median']:.2f} ms median "
        f"(p10 {r['step_ms_p10']:.2f}, p90 {r['step_ms_p90']:.2f}); reading a batch {r['input_ms_median']:.3f} ms")
  print(f"as the training loop runs: {r['loop_ms_per_step']:.2f} ms per step against {r['compute_ms_per_step']:.2f} ms "
        f"on batches already on the device: {100 * r['input_wait_share']:.1f}% of step time waiting for input")
  rate = f"{r['examples_per_s']:,.0f} examples/s" + (f", {r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else "")
  print(rate)
  print(f"{r['matmul_flops_per_step'] / 1e9:.3f} GFLOP of matrix products per step (counted from the traced step): "
        f"{r['matmul_gflops_per_s']:.1f} GFLOP/s, {100 * r['matmul_fraction_of_peak']:.1f}% of the peak below (MFU)")
  if r["flops_per_step"]:
    print(f"{r['flops_per_step'] / 1e9:.3f} GFLOP per step ({r['flops_source']}): {r['gflops_per_s']:.1f} GFLOP/s, "
          f"{100 * r['fraction_of_peak']:.1f}% of a {size}^2 {r['peak_matmul_kind']} matmul's "
          f"{r['peak_matmul_gflops_per_s']:.1f} GFLOP/s measured here")
  print(f"peak host memory {r['peak_host_memory_mb']:.0f} MB (freed blocks of every size kept: "
        f"{'yes' if r['host_memory_kept'] else 'no'}; huge pages: {'yes' if r['huge_pages'] else 'no'})")
  if r["step_temp_mb"] is not None:
    print(f"temporaries of a dispatch: {r['step_temp_mb']:.1f} MB (gradient accumulation: {r['grad_accum_steps']} "
          "micro-batch(es) per step)")
  print(json.dumps(r))


if __name__ == "__main__":
  cli.run(main, __doc__)
