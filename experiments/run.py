"""Train and evaluate one run.

    python -m experiments.run --flagfile=experiments/flags/mnist1d_cnn.flags [--overrides]

With no flags it trains the MNIST-1D CNN (offline, about a minute on 2 CPU cores). Flag
files may include others (`--flagfile=...` inside a file); later flags win. The run writes
into --workdir (default: a new folder under runs/); a workdir that holds a checkpoint
resumes from it.

Several processes make one run (see experiments/distributed.py): `srun -n N python -m
experiments.run ...` under SLURM, every worker of a TPU slice, or by hand with
`--distributed.coordinator_address=HOST:PORT --distributed.num_processes=N
--distributed.process_id=I` in each. `--help` lists the flags.
"""

from __future__ import annotations

import datetime
import os
import sys

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()  # before anything else: it may restart the program once

from absl import flags

from experiments import cli
from experiments import config as config_lib

config_lib.define_flags()
flags.DEFINE_enum("distributed.mode", "auto", ["auto", "on", "off"], "Multi-process start-up (jax.distributed): "
                  "auto under SLURM steps of several tasks (srun -n N) or with --distributed.coordinator_address; "
                  "on: always, letting JAX detect the cluster (TPU slices: pass it on every worker); off: never.")
flags.DEFINE_string("distributed.coordinator_address", "", "Multi-process runs started by hand: HOST:PORT of "
                    "process 0's coordinator (with --distributed.num_processes and --distributed.process_id). "
                    "Under SLURM (srun -n N) and on multi-host TPU slices the processes find each other without it.")
flags.DEFINE_integer("distributed.num_processes", 0, "Multi-process runs started by hand: how many processes.",
                     lower_bound=0)
flags.DEFINE_integer("distributed.process_id", -1, "Multi-process runs started by hand: this process's index, 0..N-1.")
flags.DEFINE_integer("distributed.heartbeat_timeout", 60, "Multi-process runs: seconds without a heartbeat after "
                     "which a process counts as dead and the others stop with an error.", lower_bound=1)
FLAGS = flags.FLAGS


def default_workdir(config: config_lib.Config, argv: list[str]) -> str:
  names = [os.path.splitext(os.path.basename(a.split("=", 1)[1]))[0] for a in argv if a.startswith("--flagfile=")]
  stem = names[-1] if names else f"{config.dataset}_{config.model}"
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{stem}-{stamp}")


def main() -> None:
  config = config_lib.from_flags(FLAGS)
  runtime.before_jax(config)
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(FLAGS["distributed.coordinator_address"].value, FLAGS["distributed.num_processes"].value,
                         FLAGS["distributed.process_id"].value,
                         heartbeat_timeout_s=FLAGS["distributed.heartbeat_timeout"].value,
                         mode=FLAGS["distributed.mode"].value)
  workdir = FLAGS.workdir or default_workdir(config, sys.argv)
  if not FLAGS.workdir and distributed.is_multiprocess():
    raise config_lib.ConfigError("a multi-process run needs --workdir (the same folder for every process)")

  from experiments import checkpoint, train  # pylint: disable=g-import-not-at-top  (after flags: imports jax, tf)
  try:
    result = train.train_and_evaluate(config, workdir)
  except (train.NonFiniteLoss, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except OSError as e:  # a log or sample that could not be written (a full disk, a folder gone...)
    print(f"error: {e}; the checkpoints in {workdir} are kept: run the same command to resume", file=sys.stderr)
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
  if result.get("stopped") == "SIGINT":
    sys.exit(130)  # as a shell reports Ctrl-C; SIGTERM (a scheduler's preemption) exits 0


if __name__ == "__main__":
  cli.run(main, __doc__)
