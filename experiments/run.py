"""Train and evaluate one run.

    python -m experiments.run --flagfile=experiments/flags/mnist1d_cnn.flags [--overrides]

With no flags it trains the MNIST-1D CNN (offline, about a minute on 2 CPU cores). Flag
files may include others (`--flagfile=...` inside a file); later flags win. The run writes
into --workdir (default: a new folder under runs/); a workdir that holds a checkpoint
resumes from it.

Several processes make one run (see experiments/distributed.py): `srun -n N python -m
experiments.run ...` under SLURM, every worker of a TPU slice, or by hand with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` in each.
"""

from __future__ import annotations

import datetime
import os
import sys

from experiments import host_memory, tf_import

if __name__ == "__main__":  # glibc reads it only at start: the program restarts once, before its imports
  host_memory.use_huge_pages()
  tf_import.without_keras()  # before anything imports TensorFlow

from absl import app, flags, logging

from experiments import compile_cache, cpu_threads
from experiments import config as config_lib

config_lib.define_flags()
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "Multi-process start-up (jax.distributed): auto "
                  "under SLURM steps of several tasks (srun -n N) or with --coordinator_address; on: always, "
                  "letting JAX detect the cluster (TPU slices: pass it on every worker); off: never.")
flags.DEFINE_string("coordinator_address", "", "Multi-process runs started by hand: HOST:PORT of process 0's "
                    "coordinator (with --num_processes and --process_id). Under SLURM (srun -n N) and on "
                    "multi-host TPU slices the processes find each other without it.")
flags.DEFINE_integer("num_processes", 0, "Multi-process runs started by hand: how many processes.", lower_bound=0)
flags.DEFINE_integer("process_id", -1, "Multi-process runs started by hand: this process's index, 0..N-1.")
flags.DEFINE_integer("heartbeat_timeout", 60, "Multi-process runs: seconds without a heartbeat after which a "
                     "process counts as dead and the others stop with an error.", lower_bound=1)
FLAGS = flags.FLAGS


def default_workdir(config: config_lib.Config, argv: list[str]) -> str:
  names = [os.path.splitext(os.path.basename(a.split("=", 1)[1]))[0] for a in argv if a.startswith("--flagfile=")]
  stem = names[-1] if names else f"{config.dataset}_{config.model}"
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{stem}-{stamp}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # our progress lines, not every library's INFO logs
    logging.set_verbosity(logging.WARNING)
  try:
    config = config_lib.from_flags(FLAGS)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  cpu_threads.limit(config.cpu_threads)  # before JAX starts its CPU backend
  host_memory.keep_freed()  # before JAX starts its threads (each keeps the malloc arena it starts on)
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import distributed  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           heartbeat_timeout_s=FLAGS.heartbeat_timeout, mode=FLAGS.distributed)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  workdir = FLAGS.workdir or default_workdir(config, sys.argv)
  if not FLAGS.workdir and distributed.is_multiprocess():
    raise app.UsageError("a multi-process run needs --workdir (the same folder for every process)")

  from experiments import train  # pylint: disable=g-import-not-at-top  (after flags: imports jax, tf)
  try:
    train.train_and_evaluate(config, workdir)
  except config_lib.ConfigError as e:  # bad input found once data and devices are known
    raise app.UsageError(str(e)) from None
  except train.NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except jax.errors.JaxRuntimeError as e:
    if not distributed.is_multiprocess():
      raise
    # A collective failed: another process of the run died. Leave now rather than wait for
    # the dead process at jax.distributed's shutdown barrier.
    first_line = str(e).strip().splitlines()[0]
    if len(first_line) > 200:
      first_line = first_line[:100] + " ... " + first_line[-95:]
    print(f"error: process {jax.process_index()} of {jax.process_count()}: a collective failed, most likely "
          f"because another process of the run died ({first_line}). Checkpoints are kept in {workdir}; "
          "run the same command to resume.", file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main)
