"""How a run is made fast on the machine it runs on, kept out of the models and the loop.

Each piece is measured, with and without, on the flag files it was made for
(docs/benchmarks.md, "What each CPU trick buys"); what did not pay was removed.

- `rules(platform, matmul_dtype)`: the operations of a model's program computed another way
  (applied by `rewrite.rewrite`), for the same values: on the CPU, convolutions (`conv.py`) and dense layers
  on [batch, length, ...] inputs as products of rows (`products.py`); with
  `--matmul_dtype=bfloat16`, bfloat16 matrix products (`products.py`).
- Before JAX starts (the commands call them first): XLA's CPU thread pool
  (`cpu_threads.py`, `--runtime.cpu_threads`), glibc's malloc settings
  (`host_memory.py`), TensorFlow imported without Keras (`tf_import.py`).
- `prepare_process()`, before programs are lowered: malloc's settings again, for commands
  that restore a run as a library call.
- JAX's persistent compilation cache (`compile_cache.py`).
"""

from __future__ import annotations

from typing import Any

# Nothing here imports JAX at import time: the commands set the process up before it starts.


def rules(platform: str, matmul_dtype: str = "float32") -> dict[str, Any]:
  """The rewrite rules of a model's program on devices of `platform`."""
  from experiments.runtime import conv, products  # pylint: disable=g-import-not-at-top
  on_cpu = platform == "cpu"
  found = {}
  if on_cpu:
    found["conv_general_dilated"] = conv.rule
  dot = products.dot_rule(rows=on_cpu, bf16=matmul_dtype == "bfloat16")
  if dot is not None:
    found["dot_general"] = dot
  return found


def program_start() -> None:
  """First thing in a command (`python -m experiments.run`, `.bench`...), before its
  imports: glibc's huge pages (which may restart the program once, `host_memory.py`) and
  TensorFlow without Keras (`tf_import.py`)."""
  from experiments.runtime import host_memory, tf_import  # pylint: disable=g-import-not-at-top
  host_memory.use_huge_pages()
  tf_import.without_keras()


def before_jax(config: Any) -> None:
  """What a command sets once its flags are read and before JAX starts: XLA's CPU threads
  (`--runtime.cpu_threads`), glibc's malloc (`host_memory.py`), and JAX's persistent
  compilation cache (`--runtime.compilation_cache_dir`)."""
  from experiments.runtime import compile_cache, cpu_threads, host_memory  # pylint: disable=g-import-not-at-top
  cpu_threads.limit(config.runtime.cpu_threads)
  host_memory.keep_freed()  # before JAX starts its threads (each keeps the malloc arena it starts on)
  compile_cache.enable(config.runtime.compilation_cache_dir)


def prepare_process() -> None:
  """What the process sets before it lowers a run's programs (the module docstring)."""
  from experiments.runtime import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_freed()

