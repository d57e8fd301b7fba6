"""The benchmark's figures on a tiny run: present, positive and consistent with each other."""

import glob
import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT
from experiments import bench
from experiments.bench import table
from experiments.runtime import host_memory
from experiments.config import Config
from experiments.datasets import char_text


def test_bench_times_the_real_train_step(monkeypatch, tmp_path):
  monkeypatch.chdir(ROOT)
  config = Config(model="mlp", model_hparams={"features": (64, 64)}, batch_size=50, steps=100)
  r = bench.bench(config, steps=5, warmup=1, matmul_size=128, profile_dir=str(tmp_path),
                   rounds=2)
  assert r["model"] == "mlp" and r["batch_size"] == 50 and r["devices"] == 1
  assert r["compile_s"] > 0 and 0 < r["step_ms_p10"] <= r["step_ms_median"] <= r["step_ms_p90"]
  assert 0 <= r["input_share_unoverlapped"] < 1 and 0 <= r["input_wait_share"] < 1
  assert r["examples_per_s"] == pytest.approx(50 / (r["loop_ms_per_step"] / 1e3))
  assert r["input_wait_share"] == pytest.approx(
      max(0.0, r["loop_ms_per_step"] - r["compute_ms_per_step"]) / r["loop_ms_per_step"])
  # Forward and backward of a 40-64-64-10 MLP on 50 examples: about 3 x 2 x 50 x (its weights) FLOPs.
  analytic = 2 * 3 * 50 * (40 * 64 + 64 * 64 + 64 * 10)
  assert 0.5 * analytic < r["flops_per_step"] < 3 * analytic
  assert r["gflops_per_s"] == pytest.approx(r["flops_per_step"] / (r["step_ms_median"] / 1e3) / 1e9)
  # Its products exactly: forward and weight gradients of all three layers, input gradients
  # of the last two (nothing needs the data's).
  w = (40 * 64, 64 * 64, 64 * 10)
  assert r["matmul_flops_per_step"] == 2 * 50 * (2 * sum(w) + w[1] + w[2])
  assert r["matmul_fraction_of_peak"] == pytest.approx(
      r["matmul_flops_per_step"] / (r["step_ms_median"] / 1e3) / 1e9 / r["peak_matmul_gflops_per_s"])
  assert r["peak_matmul_gflops_per_s"] > 0 and r["fraction_of_peak"] > 0 and r["peak_matmul_kind"] == "float32 x float32 -> float32"
  assert r["peak_host_memory_mb"] > 100
  assert "tokens_per_s" not in r and r["rounds"] == 2 and r["steps_per_round"] >= r["timed_steps"]
  assert glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)  # the profiler's trace
  # 100 steps at a log every 100 (the default): dispatches of up to 50 steps (the gcd with the
  # evaluation period, 250), on MNIST-1D held on the device.
  assert r["feed"] == "Examples" and r["steps_per_dispatch"] == 50 and r["timed_steps"] == 150  # 3 dispatches at least
  assert host_memory.applied() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
  row = table.table([r]).splitlines()[-1]
  assert row.startswith("| `mlp` | Examples | 50 |") and "examples/s" in row


def test_peak_matmul_of_the_models_kind():
  """The peak a run is measured against is that of the products its model computes."""
  assert bench.matmul_kind(Config(dtype="bfloat16")) == "bfloat16 x bfloat16 -> bfloat16"
  assert bench.matmul_kind(Config(matmul_dtype="bfloat16")) == "bfloat16 x bfloat16 -> float32"
  for kind in ("bfloat16 x bfloat16 -> bfloat16", "bfloat16 x bfloat16 -> float32"):
    assert bench.peak_matmul(128, repeats=2, kind=kind) > 0


def test_bench_without_tensorflow(tmp_path):
  """`launch/bench_without_tensorflow.py` benchmarks a char_text run with TensorFlow and TFDS
  stubbed out (as on an accelerator image that has neither)."""
  proc = subprocess.run(
      [sys.executable, "launch/bench_without_tensorflow.py", char_text.DEFAULT_TEXT_PATH,
       "--flagfile=experiments/flags/shakespeare_char.flags", "--gpt.num_layers=1", "--gpt.num_heads=2",
       "--gpt.embed_dim=16", "--block_size=16", "--batch_size=4", "--bench.steps=2", "--bench.warmup=1",
       "--bench.rounds=1", "--bench.matmul_size=64", f"--runtime.compilation_cache_dir={tmp_path}"],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["model"] == "gpt" and r["feed"] == "Windows" and r["tokens_per_s"] > 0
  assert r["matmul_flops_per_step"] > 0 and r["flagfile"] == "shakespeare_char.flags"
