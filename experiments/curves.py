"""Learning curves: runs' metrics.jsonl drawn against the step, one panel per run (PNG).

    python -m experiments.curves --workdir=RUN [--workdir=RUN2 ...] [--metrics=accuracy] [--out=curves.png]

Each panel shows a metric (`accuracy`, `loss`, ...) three ways: on the training batches at
each logged step (`train/`), on the validation split at each evaluation (`val/`), and on
the test split (`eval/`; with a validation split it is read once, at the end: a point).
With `--eval_train`, `fit/` (all the examples trained on, at the end) is drawn as a point.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import cli
from experiments.config import ConfigError

FLAGS = flags.FLAGS
SPLITS = (("train", "training batches", "-"), ("val", "validation", "-"), ("eval", "test", "--"),
          ("fit", "all examples trained on", ":"))


def define_flags() -> None:
  flags.DEFINE_multi_string("workdir", None, "A run's directory (repeat for several panels).", required=True)
  flags.DEFINE_string("metric", "accuracy", "The metric to draw (its train/, val/ and eval/ values).")
  flags.DEFINE_string("out", "curves.png", "The PNG to write.")
  flags.DEFINE_string("titles", "", "Comma-separated panel titles (default: the workdirs' names).")


def read(workdir: str, metric: str) -> dict[str, tuple[list[int], list[float]]]:
  """split -> (steps, values) of `split/metric` in WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise ConfigError(f"--workdir={workdir} has no metrics.jsonl")
  curves: dict[str, tuple[list[int], list[float]]] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      for split, _, _ in SPLITS:
        if f"{split}/{metric}" in row:
          steps, values = curves.setdefault(split, ([], []))
          steps.append(row["step"])
          values.append(row[f"{split}/{metric}"])
  if not curves:
    raise ConfigError(f"--metric={metric}: {path} has no train/{metric}, val/{metric}, eval/{metric} or fit/{metric}")
  return curves


def plot(workdirs: list[str], metric: str, out: str, titles: list[str] | None = None) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = [read(w, metric) for w in workdirs]  # every input checked before drawing
  titles = titles or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 0.6, 3.6), sharey=True, squeeze=False)
  for ax, curves, title in zip(axes[0], runs, titles):
    for split, label, style in SPLITS:
      if split in curves:
        steps, values = curves[split]
        ax.plot(steps, values, style, marker="o" if len(steps) == 1 else None, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.locator_params(axis="x", nbins=6)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(metric)
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main() -> None:
  titles = [t.strip() for t in FLAGS.titles.split(",")] if FLAGS.titles else None
  if titles and len(titles) != len(FLAGS.workdir):
    raise ConfigError(f"--titles names {len(titles)} panels for {len(FLAGS.workdir)} --workdir")
  plot(FLAGS.workdir, FLAGS.metric, FLAGS.out, titles)
  print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
