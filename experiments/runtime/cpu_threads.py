"""The size of XLA's CPU thread pool, which must be chosen before JAX starts its backends.

XLA's CPU client sizes its pool when it starts: from the environment variable PJRT_NPROC if
set, else one thread per core the process may use. `limit(n)` sets PJRT_NPROC (n > 0), so
it acts only if called before the first JAX computation; `experiments.run` and
`experiments.bench` call it with `--runtime.cpu_threads` right after reading their flags. Other
backends (GPU, TPU) do not read it.

Why: a step of a tiny model (the MNIST-1D paper's MLP: about 100 kernels of a few
microseconds each) spends more time handing kernels between the pool's threads than the
second core gives back; on one thread it runs 15-30% faster on a 2-core machine.
"""

from __future__ import annotations

import os

VARIABLE = "PJRT_NPROC"


def limit(n: int) -> None:
  """XLA's CPU backend will run on `n` threads (0: its default, left alone).

  Raises RuntimeError if JAX's backends have already started, where it could not act."""
  if not n:
    return
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise RuntimeError(f"--runtime.cpu_threads={n}: JAX's backends have already started; set it before the first "
                       f"JAX computation (or set {VARIABLE}={n} in the environment)")
  os.environ[VARIABLE] = str(n)
