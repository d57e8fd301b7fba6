"""A sweep's results: a table (Markdown and CSV) and a plot (PNG).

    python -m launch.report --sweep=launch/sweeps/NAME.py [--metric=eval/loss] [--root=...]

    python -m launch.report --sweep=... --x=train_flops --pareto --out=compute   # any metric against any

One row per point of the sweep: the metric's mean and standard deviation over its seeds
(the sample standard deviation, n - 1 in the denominator), each seed's value, and the
means of the sweep's extra columns. Runs without a summary.json are counted as missing,
never dropped silently. The plot puts the metric against a varied flag or any summary.json
number (train_flops, num_params, wall_time_s, ...), one line per value of the other varied
flags; with a power-law fit per line (the exponent, and the x each line needs to reach its
target) and the Pareto front of the runs when the sweep's Report (or the flags) ask.
Files: ROOT/OUT.md, ROOT/OUT.csv, ROOT/OUT.png (OUT: --out, default report).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
from typing import Any, Sequence

from absl import app, flags

from launch.spec import Report, Run, Sweep, SweepError, default_root, expand, format_value, load, point_name

flags.DEFINE_string("sweep", None, "The sweep file (launch/sweeps/NAME.py).")
flags.DEFINE_string("root", "", "Folder of the sweep's runs (default: runs/sweeps/NAME).")
flags.DEFINE_string("metric", "", "summary.json key to report (default: the sweep's report.metric).")
flags.DEFINE_string("x", "", "The plot's x: a varied flag or a summary.json key (default: the sweep's report.x, "
                    "else the first varied flag).")
flags.DEFINE_bool("error", None, "Report 1 - metric (default: the sweep's report.error).")
flags.DEFINE_bool("pareto", None, "Mark the Pareto front of the runs: lower x, better metric (default: the "
                  "sweep's report.pareto).")
flags.DEFINE_string("out", "report", "The files' name: ROOT/OUT.md, .csv, .png.")
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


def value(summary: dict[str, Any], metric: str, error: bool = False) -> float | None:
  """The run's metric (1 - metric with `error`), or None if its summary lacks it. A metric
  "A - B" is the difference of two keys (e.g. "train/accuracy - eval/accuracy", the gap)."""
  if " - " in metric:
    a, b = (value(summary, k.strip()) for k in metric.split(" - ", 1))
    v = None if a is None or b is None else a - b
  else:
    v = summary.get(metric)
  return None if v is None else 1.0 - v if error else v


def rows(sweep: Sweep, runs: Sequence[Run], found: dict[str, dict[str, Any]], metric: str,
         error: bool = False) -> list[dict[str, Any]]:
  """One dict per point: its values, its seeds' metric, mean, std, and the extra columns' means."""
  points: dict[str, list[Run]] = {}
  for run in runs:
    points.setdefault(point_name(run.point), []).append(run)
  table = []
  for name, point_runs in points.items():
    point = point_runs[0].point
    values = [v for r in point_runs if r.name in found
              for v in [value(found[r.name], metric, error)] if v is not None]
    mean, std = mean_std(values)
    first = next(iter(point.values()), None)
    table.append({
        "point": name, **dict(point), "labels": dict(sweep.report.labels.get(first, {})),
        "seeds": [r.seed for r in point_runs if r.name in found], "values": values,
        "missing": len(point_runs) - len(values), "mean": mean, "std": std, "runs": point_runs,
        "extra": {key: mean_std([v for r in point_runs if r.name in found
                                 for v in [value(found[r.name], key)] if v is not None])[0]
                  for key in sweep.report.extra}})
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
    cells += [_fmt(row["extra"][key], True) if report.percent and "accuracy" in key else _fmt_extra(row["extra"][key])
              for key in report.extra]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: str, table: list[dict[str, Any]], varied: Sequence[str], extra: Sequence[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow([*varied, "mean", "std", "n", "missing", "values", *extra])
    for row in table:
      writer.writerow([*(row[k] for k in varied), row["mean"], row["std"], len(row["values"]), row["missing"],
                       " ".join(repr(v) for v in row["values"]), *(row["extra"][k] for k in extra)])


def x_values(table: list[dict[str, Any]], found: dict[str, dict[str, Any]], x_key: str,
             varied: Sequence[str]) -> None:
  """Sets each row's "x" (and each of its runs' in "run_x"): the varied flag's value (a list's
  first number), or the summary key's value (the row's: the mean over its seeds)."""
  for row in table:
    if not x_key:  # nothing varies: one point
      row["x"], row["run_x"] = row["point"], {}
    elif x_key in varied:
      x = row[x_key]
      if isinstance(x, (list, tuple)):
        x = x[0]
      elif isinstance(x, str) and re.fullmatch(r"[0-9.e+-]+(,[0-9.e+-]+)*", x):
        x = float(x.split(",")[0])
      row["x"], row["run_x"] = x, {r.name: x for r in row["runs"]}
    else:
      row["run_x"] = {r.name: found[r.name][x_key] for r in row["runs"] if r.name in found and x_key in found[r.name]}
      row["x"] = mean_std(list(row["run_x"].values()))[0]


def power_law(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
  """(a, b) of y = a * x^b, least squares on log y against log x; None with fewer than 2
  positive points."""
  pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
  if len({p[0] for p in pairs}) < 2:
    return None
  n = len(pairs)
  mx, my = sum(p[0] for p in pairs) / n, sum(p[1] for p in pairs) / n
  b = sum((px - mx) * (py - my) for px, py in pairs) / sum((px - mx) ** 2 for px, _ in pairs)
  return math.exp(my - b * mx), b


def pareto_front(points: Sequence[tuple[float, float, str]], higher_is_better: bool) -> list[tuple[float, float, str]]:
  """The (x, metric, name) points no other point beats in both: x no larger and the metric
  no worse, one of them strictly. Sorted by x."""
  sign = -1.0 if higher_is_better else 1.0
  front, best = [], math.inf
  for x, y, name in sorted(points, key=lambda p: (p[0], sign * p[1])):
    if sign * y < best:
      front.append((x, y, name))
      best = sign * y
  return front


def _line_key(row: dict[str, Any], lines: Sequence[str]) -> str:
  return ", ".join(f"{os.path.basename(str(row[k])).removesuffix('.flags')}" if k == "flagfile" else f"{k}={row[k]}"
                   for k in lines)


def _is_own_x(report: Report, x_key: str, table: list[dict[str, Any]]) -> bool:
  """Whether x is the sweep's own (its report's x, or else its first varied flag)."""
  first = next(iter(table[0]["runs"][0].point), "") if table else ""
  return x_key == (report.x or first)


def _fits(report: Report, x_key: str, varied: Sequence[str]) -> bool:
  """Whether to fit: the sweep asks for it, and x is the sweep's own."""
  return report.fit == "power_law" and x_key == (report.x or (varied[0] if varied else ""))


def _fit_points(group: list[dict[str, Any]], report: Report) -> tuple[list[float], list[float]]:
  low, high = report.fit_range
  kept = [r for r in group if r["values"] and low <= r["x"] <= high]
  return [r["x"] for r in kept], [r["mean"] for r in kept]


def _varied_flags(table: list[dict[str, Any]]) -> set[str]:
  """The varied flags (the keys of the rows' points), to tell a flag from a summary key."""
  return {k for row in table for k in row["runs"][0].point} if table else set()


def _higher_is_better(metric: str, error: bool) -> bool:
  """Accuracy-like metrics are better higher (the rule of --best_mode=auto); losses, error
  rates and the rest lower."""
  return not error and any(w in metric for w in ("accuracy", "acc", "exact", "bleu"))


def _choice_value(row: dict[str, Any], found: dict[str, dict[str, Any]], key: str) -> float:
  """The mean over the row's finished seeds of `key` (nan if none has it)."""
  return mean_std([v for r in row["runs"] if r.name in found for v in [value(found[r.name], key)] if v is not None])[0]


def _run_points(table: list[dict[str, Any]], found: dict[str, dict[str, Any]], metric: str,
                error: bool) -> list[tuple[float, float, str]]:
  """(x, metric, run name) of every finished run."""
  points = [(row["run_x"][n], value(found[n], metric, error), n) for row in table for n in row["run_x"]]
  return [p for p in points if p[1] is not None]


def analyses(sweep: Sweep, table: list[dict[str, Any]], found: dict[str, dict[str, Any]], x_key: str,
             lines: Sequence[str], varied: Sequence[str], metric: str, error: bool, pareto: bool) -> str:
  """Markdown for the fits and the Pareto front."""
  report, text = sweep.report, ""
  metric_name = f"1 - {metric}" if error else metric
  if _fits(report, x_key, varied):
    low, high = report.fit_range
    where = "" if (low, high) == (0.0, math.inf) else f", {low:g} <= {x_key} <= {high:g}"
    text += (f"\nPower law per line, {metric_name} = a * {x_key}^b (least squares on log-log axes, over the "
             f"points' means{where}):\n\n| line | b | a | {x_key} to reach the target |\n|---|---|---|---|\n")
    for line, group in _groups(table, lines).items():
      fit = power_law(*_fit_points(group, report))
      if fit is None:
        continue
      a, b = fit
      target = report.targets.get(group[0][lines[0]]) if lines else None
      reach = "-"
      if target is not None:
        goal = 1.0 - target if error else target
        at = f"(for {_fmt(goal, report.percent)}{'%' if report.percent else ''})"
        reach = f"{(goal / a) ** (1 / b):,.0f} {at}" if b < 0 else f"not reached, b >= 0 {at}"
      text += f"| {line or 'all'} | {b:.3f} | {a:.3g} | {reach} |\n"
  if report.choose:
    higher = _higher_is_better(report.choose, False)
    per = ["flagfile"] if table and "flagfile" in table[0] else []  # one choice per flag file, over all else
    text += (f"\nChosen on {report.choose} (the best mean over seeds{' per flag file' if per else ''}), and its "
             f"{metric_name}:\n\n| flag file | chosen | {report.choose} | {metric_name} |\n|---|---|---|---|\n")
    for line, group in _groups(table, per).items():
      scored = [row for row in group if not math.isnan(_choice_value(row, found, report.choose))]
      if not scored:
        continue
      row = (max if higher else min)(scored, key=lambda r: _choice_value(r, found, report.choose))
      std = "" if math.isnan(row["std"]) else f" ± {_fmt(row['std'], report.percent, 2)}"
      chosen = ", ".join(f"{k}={format_value(v)}" for k, v in row["runs"][0].point.items() if k != "flagfile")
      text += (f"| {line or 'all'} | {chosen} | {_fmt(_choice_value(row, found, report.choose), report.percent)}"
               f" | **{_fmt(row['mean'], report.percent)}{std}** |\n")
  if pareto:
    higher = _higher_is_better(metric, error)
    points = _run_points(table, found, metric, error)
    front = pareto_front(points, higher)
    text += (f"\nPareto front of the {len(points)} runs ({'higher' if higher else 'lower'} {metric_name}, lower "
             f"{x_key}):\n\n| run | {x_key} | {metric_name} |\n|---|---|---|\n")
    text += "".join(f"| {n} | {x:.4g} | {_fmt(y, report.percent)} |\n" for x, y, n in front)
  return text


def _groups(table: list[dict[str, Any]], lines: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in table:
    groups.setdefault(_line_key(row, lines), []).append(row)
  return groups


def plot(path: str, sweep: Sweep, table: list[dict[str, Any]], found: dict[str, dict[str, Any]], metric: str,
         x_key: str, lines: Sequence[str], error: bool, pareto: bool, fitting: bool) -> None:
  """The metric (mean, std as error bars) against x; categorical x for non-numbers, log x
  when the values span a factor of 30 or more. Fitted power laws dashed; the Pareto front
  of the runs as a step line over every run's dot."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  report = sweep.report
  scale = 100.0 if report.percent else 1.0
  metric_name = f"1 - {metric}" if error else metric
  groups = _groups(table, lines)
  xs = [row["x"] for row in table if row["values"]]
  numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x) for x in xs)
  categories = list(dict.fromkeys(os.path.basename(str(x)).removesuffix(".flags") for x in xs))
  fig, ax = plt.subplots(figsize=(6.4, 4.0) if numeric or len(categories) <= 8 else (0.5 * len(categories) + 2, 5.5))
  for label, group in groups.items():
    group = [row for row in group if row["values"]]
    if numeric:
      group.sort(key=lambda row: row["x"])
      position = [row["x"] for row in group]
    else:
      position = [categories.index(os.path.basename(str(row["x"])).removesuffix(".flags")) for row in group]
    means = [scale * row["mean"] for row in group]
    stds = [0.0 if math.isnan(row["std"]) else scale * row["std"] for row in group]
    if report.choose and not error:  # what the choice was made on, beside the metric
      ax.scatter(position, [scale * _choice_value(row, found, report.choose) for row in group], marker="o",
                 facecolors="none", edgecolors="grey", s=40, zorder=3,
                 label=f"{report.choose} (mean)" if label == next(iter(groups)) else None)
    joined = numeric and x_key in _varied_flags(table)  # along a varied flag; a summary number: dots
    line = ax.errorbar(position, means, yerr=stds, marker="o", capsize=4, linestyle="-" if joined else "none",
                       label=label or None)
    fit_x, fit_y = _fit_points(group, report) if fitting and numeric else ([], [])
    fit = power_law(fit_x, fit_y)
    if fit is not None:
      grid = [min(fit_x) * (max(fit_x) / min(fit_x)) ** (i / 50) for i in range(51)]
      ax.plot(grid, [scale * fit[0] * g ** fit[1] for g in grid], linestyle="--", color=line[0].get_color(),
              alpha=0.7, label=f"{label}: b = {fit[1]:.3f}" if label else f"b = {fit[1]:.3f}")
  if pareto and numeric:
    points = _run_points(table, found, metric, error)
    ax.scatter([p[0] for p in points], [scale * p[1] for p in points], s=8, color="grey", alpha=0.5, zorder=1)
    front = pareto_front(points, _higher_is_better(metric, error))
    ax.step([p[0] for p in front], [scale * p[1] for p in front], where="post", color="black", linewidth=1.5,
            label="Pareto front (runs)")
  own = _is_own_x(report, x_key, table) and (metric, error) == (report.metric, report.error)  # the sweep's axes
  references = report.references if own else {}
  for (label, points), marker in zip(references.items(), "XPD*"):
    ax.scatter([p[0] for p in points], [scale * p[1] for p in points], marker=marker, s=70, color="black",
               zorder=3, label=label)
  if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 30:
    ax.set_xscale("log")
  if report.log_y:
    ax.set_yscale("log")
  if not numeric:
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
  ax.set_xlabel(report.x_label if report.x_label and _is_own_x(report, x_key, table) else x_key)
  ax.set_ylabel(metric_name + (" (%)" if report.percent else ""))
  ax.grid(alpha=0.3, which="both")
  if len(groups) > 1 or report.fit or pareto or references or report.choose:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _flags(metric: str, x: str, error: bool | None, pareto: bool | None, out: str) -> str:
  """The report command's flags that were given."""
  given = [f"--metric={metric}" if metric else "", f"--x={x}" if x else "",
           "" if error is None else "--error" if error else "--noerror",
           "" if pareto is None else "--pareto" if pareto else "--nopareto", f"--out={out}" if out != "report" else ""]
  return "".join(" " + flag for flag in given if flag)


def report(sweep_path: str, root: str = "", metric: str = "", x: str = "", error: bool | None = None,
           pareto: bool | None = None, out: str = "report") -> str:
  """Writes ROOT/OUT.{md,csv,png}; returns the Markdown."""
  name, sweep = load(sweep_path)
  runs = expand(sweep)
  root = os.path.abspath(root or default_root(name))
  given = _flags(metric, x, error, pareto, out)
  metric = metric or sweep.report.metric
  error = sweep.report.error if error is None else error
  pareto = sweep.report.pareto if pareto is None else pareto
  found = summaries(runs, root)
  if not found:
    raise SweepError(f"no run of sweep {name} has finished in {root}")
  varied = list(dict.fromkeys(k for run in runs for k in run.point))
  x_key = x or sweep.report.x or (varied[0] if varied else "")
  if x_key and x_key not in varied and not any(x_key in summary for summary in found.values()):
    raise SweepError(f"--x={x_key}: neither a varied flag ({', '.join(varied) or 'none'}) nor a key of the runs' "
                     "summary.json")
  # One line per value of the other varied flags; against a summary key, of the first varied flag.
  lines = list(sweep.report.lines) or ([k for k in varied if k != x_key] if x_key in varied else varied[:1])
  metric_name = f"1 - {metric}" if error else metric
  table = rows(sweep, runs, found, metric, error)
  x_values(table, found, x_key, varied)
  text = markdown(sweep, table, metric_name, varied)
  text += (f"\n{len(found)} of {len(runs)} runs finished. Std: the sample standard deviation over seeds "
           f"(n - 1). Command: `python -m launch.report --sweep={sweep_path}{given}`.\n")
  text += analyses(sweep, table, found, x_key, lines, varied, metric, error, pareto)
  with open(os.path.join(root, f"{out}.md"), "w", encoding="utf-8") as f:
    f.write(text)
  write_csv(os.path.join(root, f"{out}.csv"), table, varied, list(sweep.report.extra))
  plot(os.path.join(root, f"{out}.png"), sweep, table, found, metric, x_key, lines, error, pareto,
       _fits(sweep.report, x_key, varied))
  return text


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.sweep:
    raise app.UsageError("--sweep=launch/sweeps/NAME.py is required")
  try:
    text = report(FLAGS.sweep, FLAGS.root, FLAGS.metric, FLAGS.x, FLAGS.error, FLAGS.pareto, FLAGS.out)
  except SweepError as e:
    raise app.UsageError(str(e)) from None
  print(text, end="")


if __name__ == "__main__":
  app.run(main)
