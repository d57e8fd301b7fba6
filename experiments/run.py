"""Train and evaluate one run.

    python -m experiments.run --flagfile=experiments/flags/mnist1d_cnn.flags [--overrides]

With no flags it trains the MNIST-1D CNN (offline, about a minute on 2 CPU cores). Flag
files may include others (`--flagfile=...` inside a file); later flags win. The run writes
into --workdir (default: a new folder under runs/); a workdir that holds a checkpoint
resumes from it.
"""

from __future__ import annotations

import datetime
import os
import sys

from absl import app, flags, logging

from experiments import config as config_lib

config_lib.define_flags()
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
  workdir = FLAGS.workdir or default_workdir(config, sys.argv)

  from experiments import train  # pylint: disable=g-import-not-at-top  (after flags: imports jax, tf)
  try:
    train.train_and_evaluate(config, workdir)
  except config_lib.ConfigError as e:  # bad input found once data and devices are known
    raise app.UsageError(str(e)) from None
  except train.NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
