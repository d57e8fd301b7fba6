"""Search strategies compared: the best validation value found against wall time, one line per
strategy (the mean over its searches, the band their range), from finished searches' folders.

    python -m launch.search_compare --space=launch/spaces/mnist1d_cnn.py \\
        --searches=random:runs/search/cmp/random-0,runs/search/cmp/random-1 \\
        --searches=tpe+asha:runs/search/cmp/tpe-asha-0,... --out=docs/search_strategies.png

Each search's settings are read from its study (journal file ROOT/study.journal); its time
starts when its first trial started. Prints, per strategy, the best value at a few times and at
the end (mean, min, max over its searches) and the trials it trained.
"""

from __future__ import annotations

import os
import statistics

from absl import app, flags

flags.DEFINE_string("space", None, "The space the searches searched.")
flags.DEFINE_multi_string("searches", [], "LABEL:ROOT,ROOT,... (the searches of one strategy, e.g. its seeds).")
flags.DEFINE_string("out", "", "The plot (PNG); empty: none.")
flags.DEFINE_float("minutes", 0, "The budget shown (0: the longest search).")
FLAGS = flags.FLAGS


def curve(root: str, space_name: str, space):
  """(seconds, best value so far) at each completed trial of the search in `root`, and the
  number of trials it trained."""
  import optuna  # pylint: disable=g-import-not-at-top
  from launch import search_results, study as study_lib  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.load_study(study_name=space_name, storage=study_lib.open_storage("", root))
  points = [(seconds, best) for _, seconds, best in search_results.progress(study, space)]
  return points, study_lib.spent(study_lib.counts(study))


def best_at(points, seconds: float) -> float | None:
  values = [b for s, b in points if s <= seconds]
  return values[-1] if values else None


def main(argv):
  del argv
  from launch import space as space_lib  # pylint: disable=g-import-not-at-top
  name, space = space_lib.load(FLAGS.space)
  strategies = {}
  for spec in FLAGS.searches:
    label, _, roots = spec.partition(":")
    strategies[label] = [curve(os.path.abspath(r), name, space) for r in roots.split(",") if r]
  end = FLAGS.minutes * 60 or max(p[-1][0] for runs in strategies.values() for p, _ in runs if p)
  times = [end * f for f in (0.25, 0.5, 0.75, 1.0)]
  print(f"best {space.metric} found by (minutes) " + " ".join(f"{t / 60:>16.1f}" for t in times) + "   trials")
  for label, runs in strategies.items():
    cells = []
    for t in times:
      values = [v for v in (best_at(p, t) for p, _ in runs) if v is not None]
      cells.append(f"{statistics.fmean(values):.4f} ({min(values):.3f}-{max(values):.3f})" if values else "-")
    print(f"{label:<20} " + " ".join(f"{c:>16}" for c in cells) + f"   {sum(n for _, n in runs) / len(runs):.0f}")
  if FLAGS.out:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    grid = np.linspace(0, end, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, runs in strategies.items():
      curves = np.array([[np.nan if (v := best_at(p, t)) is None else v for t in grid] for p, _ in runs])
      valid = ~np.any(np.isnan(curves), axis=0)  # from when every search has a trial done
      mean = np.nanmean(curves[:, valid], axis=0)
      line, = ax.plot(grid[valid] / 60, mean, label=f"{label} ({len(runs)} searches)")
      ax.fill_between(grid[valid] / 60, np.nanmin(curves[:, valid], axis=0), np.nanmax(curves[:, valid], axis=0),
                      color=line.get_color(), alpha=0.15)
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel(f"best {space.metric} so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FLAGS.out, dpi=120)
    print(f"plot: {FLAGS.out}")


if __name__ == "__main__":
  flags.mark_flag_as_required("space")
  app.run(main)
