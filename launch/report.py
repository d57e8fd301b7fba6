"""A sweep's results: a table (Markdown and CSV) and a plot (PNG).

    python -m launch.report --sweep=launch/sweeps/NAME.py [--metric=eval/loss] [--root=...]

One row per point of the sweep: the metric's mean and standard deviation over its seeds
(the sample standard deviation, n - 1 in the denominator), each seed's value, and the
means of the sweep's extra columns. Runs without a summary.json are counted as missing,
never dropped silently. Files: ROOT/report.md, ROOT/report.csv, ROOT/report.png.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from typing import Any, Sequence

from absl import app, flags

from launch.spec import Run, Sweep, SweepError, default_root, expand, load, point_name

flags.DEFINE_string("sweep", None, "The sweep file (launch/sweeps/NAME.py).")
flags.DEFINE_string("root", "", "Folder of the sweep's runs (default: runs/sweeps/NAME).")
flags.DEFINE_string("metric", "", "summary.json key to report (default: the sweep's report.metric).")
FLAGS = flags.FLAGS


def summaries(runs: Sequence[Run], root: str) -> dict[str, dict[str, Any]]:
  """Run name -> its summary.json, for the runs that finished."""
  found = {}
  for run in runs:
    path = os.path.join(root, run.name, "summary.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        found[run.name] = json.load(f)
  return found


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """The mean and the sample standard deviation (nan for a single value)."""
  if not values:
    return math.nan, math.nan
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def rows(sweep: Sweep, runs: Sequence[Run], found: dict[str, dict[str, Any]], metric: str) -> list[dict[str, Any]]:
  """One dict per point: its values, its seeds' metric, mean, std, and the extra columns' means."""
  points: dict[str, list[Run]] = {}
  for run in runs:
    points.setdefault(point_name(run.point), []).append(run)
  table = []
  for name, point_runs in points.items():
    point = point_runs[0].point
    values = [found[r.name][metric] for r in point_runs if r.name in found and metric in found[r.name]]
    mean, std = mean_std(values)
    first = next(iter(point.values()), None)
    table.append({
        "point": name, **dict(point), "labels": dict(sweep.report.labels.get(first, {})),
        "seeds": [r.seed for r in point_runs if r.name in found], "values": values,
        "missing": len(point_runs) - len(values), "mean": mean, "std": std,
        "extra": {key: mean_std([found[r.name][key] for r in point_runs
                                 if r.name in found and key in found[r.name]])[0] for key in sweep.report.extra}})
  return table


def _fmt(value: float, percent: bool, digits: int = 4) -> str:
  if math.isnan(value):
    return "-"
  return f"{100 * value:.1f}" if percent else f"{value:.{digits}g}"


def _fmt_extra(value: float) -> str:
  return "-" if math.isnan(value) else f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"


def markdown(sweep: Sweep, table: list[dict[str, Any]], metric: str, varied: Sequence[str]) -> str:
  report = sweep.report
  label_keys = list(dict.fromkeys(k for row in table for k in row["labels"]))
  unit = "%" if report.percent else ""
  n = max((len(row["values"]) + row["missing"] for row in table), default=0)
  header = [*label_keys, *("flag file" if k == "flagfile" else k for k in varied),
            f"{metric}: mean ± std ({n} seeds)"]
  header += ["per seed"] if report.per_seed else []
  header += list(report.extra.values())
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table:
    cells = [row["labels"].get(k, "") for k in label_keys]
    cells += [f"`{os.path.basename(row[k])}`" if k == "flagfile" else str(row[k]) for k in varied]
    std = "" if math.isnan(row["std"]) else f" ± {_fmt(row['std'], report.percent, 2)}"
    result = f"**{_fmt(row['mean'], report.percent)}{std}{unit}**" if row["values"] else "no finished run"
    if row["missing"] and row["values"]:
      result += f" ({row['missing']} missing)"
    cells.append(result)
    if report.per_seed:
      cells.append(" / ".join(_fmt(v, report.percent) for v in row["values"]))
    cells += [_fmt_extra(row["extra"][key]) for key in report.extra]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: str, table: list[dict[str, Any]], varied: Sequence[str], extra: Sequence[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow([*varied, "mean", "std", "n", "missing", "values", *extra])
    for row in table:
      writer.writerow([*(row[k] for k in varied), row["mean"], row["std"], len(row["values"]), row["missing"],
                       " ".join(repr(v) for v in row["values"]), *(row["extra"][k] for k in extra)])


def plot(path: str, table: list[dict[str, Any]], metric: str, varied: Sequence[str], percent: bool) -> None:
  """The metric (mean, std as error bars) against the first varied flag; categorical x for
  non-numbers, log x when the values span a factor of 30 or more. Other varied flags: one
  line each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  x_key = varied[0] if varied else None
  scale = 100.0 if percent else 1.0
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in table:
    groups.setdefault(", ".join(f"{k}={row[k]}" for k in varied[1:]), []).append(row)
  xs = [row[x_key] for row in table] if x_key else [0]
  numeric = x_key is not None and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
  categories = list(dict.fromkeys(os.path.basename(str(x)).removesuffix(".flags") for x in xs))
  for label, group in groups.items():
    if numeric:
      position = [row[x_key] for row in group]
    else:
      position = [categories.index(os.path.basename(str(row[x_key] if x_key else 0)).removesuffix(".flags"))
                  for row in group]
    means = [scale * row["mean"] for row in group]
    stds = [0.0 if math.isnan(row["std"]) else scale * row["std"] for row in group]
    ax.errorbar(position, means, yerr=stds, marker="o", capsize=4, linestyle="-" if numeric else "none",
                label=label or None)
  if numeric and min(xs) > 0 and max(xs) / min(xs) >= 30:
    ax.set_xscale("log")
  if not numeric:
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
  ax.set_xlabel(x_key or "")
  ax.set_ylabel(metric + (" (%)" if percent else ""))
  ax.grid(alpha=0.3)
  if len(groups) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(sweep_path: str, root: str = "", metric: str = "") -> str:
  """Writes ROOT/report.{md,csv,png}; returns the Markdown."""
  name, sweep = load(sweep_path)
  runs = expand(sweep)
  root = os.path.abspath(root or default_root(name))
  metric = metric or sweep.report.metric
  found = summaries(runs, root)
  if not found:
    raise SweepError(f"no run of sweep {name} has finished in {root}")
  varied = list(dict.fromkeys(k for run in runs for k in run.point))
  table = rows(sweep, runs, found, metric)
  text = markdown(sweep, table, metric, varied)
  text += (f"\n{len(found)} of {len(runs)} runs finished. Std: the sample standard deviation over seeds "
           f"(n - 1). Command: `python -m launch.report --sweep={sweep_path}`.\n")
  with open(os.path.join(root, "report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  write_csv(os.path.join(root, "report.csv"), table, varied, list(sweep.report.extra))
  plot(os.path.join(root, "report.png"), table, metric, varied, sweep.report.percent)
  return text


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.sweep:
    raise app.UsageError("--sweep=launch/sweeps/NAME.py is required")
  try:
    text = report(FLAGS.sweep, FLAGS.root, FLAGS.metric)
  except SweepError as e:
    raise app.UsageError(str(e)) from None
  print(text, end="")


if __name__ == "__main__":
  app.run(main)
