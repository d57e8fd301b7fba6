"""Shared test set-up: a private TFDS data directory and small run helpers."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from experiments.runtime import tf_import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(ROOT, "experiments", "flags")

# Generated datasets go to a directory of this test session, never to ~/tensorflow_datasets.
# The pytest-xdist workers and the CLI subprocesses of tests inherit it from the controller
# and share it: `experiments.data` prepares each dataset once, under a file lock.
# They share a persistent XLA compilation cache too, as a user's repeated runs would: the many
# runs of the same tiny models compile once.
if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller (or a run without xdist)
  _session = tempfile.mkdtemp(prefix="nets-tests-")
  atexit.register(shutil.rmtree, _session, ignore_errors=True)
  os.environ["TFDS_DATA_DIR"] = os.path.join(_session, "tfds")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_session, "jax-cache")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf_import.without_keras()  # 1.5 s less start-up in every run the tests start (experiments/runtime/tf_import.py)
# Tests run few steps of many small programs, so compiling dominates: XLA's backend without
# LLVM optimisation compiles them about 4x faster (the programs and their numbers are the same
# XLA programs; only the machine code is less optimised). Tests that set XLA_FLAGS add to it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, check: bool = True,
            module: str = "experiments.run") -> subprocess.CompletedProcess:
  """Runs `python -m experiments.run ARGS` from the repository root."""
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, **(env or {})})
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
  return proc


@pytest.fixture(scope="session")
def tfds_dir():
  os.makedirs(os.environ["TFDS_DATA_DIR"], exist_ok=True)
  return os.environ["TFDS_DATA_DIR"]


def train_in_process(*args: str, workdir: str) -> dict:
  """`python -m experiments.run ARGS --workdir=WORKDIR` in this process (no interpreter start-up),
  with the repository root as the working directory; returns the summary."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import config as config_lib, train  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  config_lib.define_flags(values)
  cwd = os.getcwd()
  os.chdir(ROOT)  # flag files include each other by repository-relative paths
  try:
    values(["run", *args])
    return train.train_and_evaluate(config_lib.from_flags(values), str(workdir))
  finally:
    os.chdir(cwd)


# The longest tests (30-100 s each on 2 cores) start first, so that with `-n 2` neither
# worker is left running one of them alone at the end.
LONGEST_FIRST = ("test_flower.py::", "test_parallel.py::", "test_multihost.py::test_processes_meshes_and_checkpoints_agree",
                 "test_language_modelling.py::test_gpt_run_writes_samples", "test_resume.py::test_killed", "test_search.py::test_killed", "test_search.py::test_two_workers",
                 "test_generative_spine.py::test_sample_quality", "test_generative_spine.py::test_each_player",
                 "test_explain.py::test_explain_a_language_model", "test_decoding.py::test_exact_match_bench",
                 "test_export.py::test_a_language_model", "test_gpt2.py::test_text_dataset_with_gpt2_tokenizer")


def pytest_collection_modifyitems(items):
  def rank(item):
    return next((i for i, name in enumerate(LONGEST_FIRST) if name in item.nodeid), len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: the rest keep their order
