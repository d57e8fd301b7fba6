"""Scores an image generator with a digits classifier trained here (our metric, not FID).

    python -m experiments.run --flagfile=experiments/flags/digits_cnn.flags --workdir=runs/digits_cnn
    python -m experiments.sample_quality --classifier=runs/digits_cnn --workdir=runs/ddpm_digits

Prints the scores of `experiments.quality.score` as one JSON line and writes them to
WORKDIR/sample_quality.json.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "Run directory of the generator.", required=True)
flags.DEFINE_string("classifier", None, "Run directory of the classifier (e.g. digits_cnn.flags).", required=True)
flags.DEFINE_integer("num_samples", 1000, "Images to generate.", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from experiments import quality  # pylint: disable=g-import-not-at-top  (after flag parsing)
  from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    result = quality.score(FLAGS.workdir, FLAGS.classifier, FLAGS.num_samples, FLAGS.seed)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  with open(os.path.join(FLAGS.workdir, "sample_quality.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result))


if __name__ == "__main__":
  from experiments import tf_import  # pylint: disable=g-import-not-at-top
  tf_import.without_keras()
  app.run(main)
