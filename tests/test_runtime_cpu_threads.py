"""--runtime.cpu_threads: the size of XLA's CPU thread pool, chosen before JAX starts its backends."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from experiments.runtime import cpu_threads

_POOL = """
import os, sys
from experiments.runtime import cpu_threads
cpu_threads.limit(int(sys.argv[1]))
import jax, jax.numpy as jnp
jax.jit(lambda a: a @ a)(jnp.ones((256, 256))).block_until_ready()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(names.count("tf_XLAEigen"))
"""


def _pool_size(n: int) -> int:
  """The threads of XLA's CPU pool (Linux names them tf_XLAEigen) in a new process after limit(n)."""
  env = {k: v for k, v in os.environ.items() if k != cpu_threads.VARIABLE}
  proc = subprocess.run([sys.executable, "-c", _POOL, str(n)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120, check=True)
  return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from Linux's /proc")
def test_limit_sizes_the_cpu_thread_pool():
  n = len(os.sched_getaffinity(0)) + 1  # never the default (one thread per core)
  assert _pool_size(n) == n


def test_limit_once_jax_has_started_is_an_error():
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()
  cpu_threads.limit(0)  # the default: nothing to do
  with pytest.raises(RuntimeError, match="already started"):
    cpu_threads.limit(1)


def test_run_applies_it_before_jax_starts(tmp_path):
  """experiments.run sets the pool from the flag before its first JAX computation (limit
  raises otherwise); the flag is kept in the run's flag file."""
  run_cli("--model=logreg", "--steps=2", "--log_every=1", "--eval_every=0", "--runtime.cpu_threads=1",
          f"--workdir={tmp_path}")
  assert "--runtime.cpu_threads=1" in (tmp_path / "flags.flags").read_text().splitlines()
