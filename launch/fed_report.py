"""A federated sweep's results: rounds to a target accuracy, and the accuracy reached.

    python -m launch.fed_report --sweep=launch/sweeps/mnist1d_fed_communication.py --target=0.88
    python -m launch.fed_report --sweep=launch/sweeps/mnist1d_fed_noniid.py --target=0.8

Each run's rounds to target are the first evaluated round whose --metric (default
val/accuracy, read from the run's metrics.jsonl) reaches --target, or none within its rounds.
Runs that differ only in the flags of --choose_over (default: the clients' learning rate) are
one configuration: it takes the value that reaches the target in the fewest rounds (else the
best final metric), on validation, as McMahan et al. chose their learning rates. One row per
configuration (the other varied flags), over the sweep's seeds: rounds to target (mean, and how
many seeds reached it), the final validation metric, the test metric (summary.json's
eval/accuracy: read once, at the end), and epsilon where the run spent privacy. With
--baseline=VARIANT (e.g. FedSGD), each row's rounds are also given as that variant's rounds
divided by them, for the same other flags. Writes ROOT/fed_report.md (and prints it) and ROOT/fed_report.png (the chosen runs' curves).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from typing import Any, Sequence

from absl import app, flags

from launch.spec import Run, default_root, expand, format_value, load

def define_flags() -> None:
  flags.DEFINE_string("sweep", None, "The sweep file (launch/sweeps/NAME.py).")
  flags.DEFINE_string("root", "", "Folder of the sweep's runs (default: runs/sweeps/NAME).")
  flags.DEFINE_float("target", 0.88, "The metric to reach.")
  flags.DEFINE_string("metric", "val/accuracy", "The metric of metrics.jsonl that is to reach --target.")
  flags.DEFINE_list("choose_over", ["fed.local_learning_rate"], "Varied flags chosen per configuration (fewest rounds "
                    "to target on validation).")
  flags.DEFINE_string("baseline", "", "A variant whose rounds each row's are compared to (e.g. FedSGD).")


FLAGS = flags.FLAGS


def curve(workdir: str, metric: str) -> list[tuple[int, float]]:
  """(round, metric) of every evaluation a run logged."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(r["step"], r[metric]) for r in rows if metric in r]


def rounds_to(points: Sequence[tuple[int, float]], target: float) -> int | None:
  return next((step for step, value in points if value >= target), None)


def run_result(run: Run, root: str, metric: str, target: float) -> dict[str, Any] | None:
  """A finished run's rounds to target, final and test metrics; a run stopped by a non-finite
  loss counts too (its rounds to target from its curve before it diverged; "diverged" is the
  round its log names). None for a run not finished."""
  workdir = os.path.join(root, run.name)
  points = curve(workdir, metric)
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
    return {"rounds": rounds_to(points, target), "final": summary.get(metric, points[-1][1] if points else math.nan),
            "test": summary.get("eval/accuracy", math.nan), "epsilon": summary.get("privacy_epsilon"),
            "steps": summary["step"], "diverged": None, "curve": points}
  log = os.path.join(workdir, "run.log")
  text = open(log, encoding="utf-8").read() if os.path.exists(log) else ""
  found = re.search(r"(?:loss is (?:nan|inf|-inf) at step|NaN or infinite by step) (\d+)", text)
  if not found:
    return None
  diverged = int(found.group(1))
  finite = [(step, value) for step, value in points if step < diverged and math.isfinite(value)]
  return {"rounds": rounds_to(finite, target), "final": math.nan, "test": math.nan, "epsilon": None,
          "steps": diverged, "diverged": diverged, "curve": finite}


STATS = ("seeds", "reached", "rounds", "budget", "final", "final_std", "test", "epsilon", "speedup", "diverged",
         "curve", "chosen")


def _key(point: dict[str, Any], leave_out: Sequence[str]) -> tuple:
  return tuple((k, v) for k, v in point.items() if k not in leave_out)


def _rank(results: list[dict[str, Any]]) -> tuple:
  """Fewest rounds to target (over the seeds that reached it, those that did not last), then the best final metric."""
  reached = [r["rounds"] for r in results if r["rounds"] is not None]
  finals = [r["final"] for r in results if math.isfinite(r["final"])]
  return (-len(reached), statistics.fmean(reached) if reached else math.inf,
          -statistics.fmean(finals) if finals else math.inf)


def table(sweep_path: str, root: str, metric: str, target: float, choose_over: Sequence[str],
          baseline: str = "") -> tuple[list[dict[str, Any]], int]:
  """One row per configuration (module docstring); and the number of runs not finished."""
  _, sweep = load(sweep_path)
  runs = expand(sweep)
  groups: dict[tuple, dict[tuple, list[dict[str, Any]]]] = {}
  missing = 0
  for run in runs:
    result = run_result(run, root, metric, target)
    if result is None:
      missing += 1
      continue
    config = _key(run.point, choose_over)
    chosen = tuple((k, run.point[k]) for k in choose_over if k in run.point)
    groups.setdefault(config, {}).setdefault(chosen, []).append(result)
  rows = []
  for config, by_choice in groups.items():
    chosen, results = min(by_choice.items(), key=lambda item: _rank(item[1]))
    reached = [r["rounds"] for r in results if r["rounds"] is not None]
    finals = [r["final"] for r in results if math.isfinite(r["final"])]
    tests = [r["test"] for r in results if math.isfinite(r["test"])]
    rows.append({**dict(config), **dict(chosen), "seeds": len(results), "reached": len(reached),
                 "rounds": statistics.fmean(reached) if reached else None,
                 "budget": max(r["steps"] for r in results),
                 "final": statistics.fmean(finals) if finals else math.nan,
                 "final_std": statistics.stdev(finals) if len(finals) > 1 else math.nan,
                 "test": statistics.fmean(tests) if tests else math.nan,
                 "epsilon": results[0]["epsilon"],
                 "diverged": [r["diverged"] for r in results if r["diverged"] is not None],
                 "curve": results[0]["curve"], "chosen": dict(chosen)})
  if baseline:
    for row in rows:
      same = [k for k, _ in _key(row, (*STATS, *choose_over, "variant"))]
      base = next((b for b in rows if b.get("variant") == baseline and all(b.get(k) == row[k] for k in same)), None)
      row["speedup"] = base["rounds"] / row["rounds"] if base and base["rounds"] and row["rounds"] else None
  return rows, missing


def plot(path: str, rows: list[dict[str, Any]], metric: str, target: float, title: str = "") -> None:
  """The chosen configurations' curves (first seed), one panel per value of the flag that is
  neither the variant nor chosen (e.g. the partition), with the target as a line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panel_key = next((k for k in rows[0] if k not in STATS and k != "variant" and k not in rows[0]["chosen"]), None)
  panels = sorted({r.get(panel_key) for r in rows}, key=str)
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, value in zip(axes[0], panels):
    for row in rows:
      if row.get(panel_key) != value or not row["curve"]:
        continue
      steps, values = zip(*row["curve"])
      name = row.get("variant", "") + "".join(f", {k.split('.')[-1]} {format_value(v)}"
                                              for k, v in row["chosen"].items())
      ax.plot(steps, values, label=name, linewidth=1)
    ax.axhline(target, color="black", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"{panel_key.split('.')[-1]} = {format_value(value)}" if panel_key else title, fontsize=10)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(rows: list[dict[str, Any]], metric: str, target: float, missing: int) -> str:
  if not rows:
    return "no finished runs\n"
  varied = [k for k in rows[0] if k not in STATS]
  head = varied + [f"rounds to {metric} {target:g}", "x fewer than baseline" if "speedup" in rows[0] else None,
                   f"final {metric}", "test accuracy (once)", "epsilon" if any(r["epsilon"] for r in rows) else None]
  head = [h for h in head if h]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    rounds = (f"{r['rounds']:.0f}" if r["rounds"] is not None else f"not in {r['budget']}")
    if r["seeds"] > 1:
      rounds += f" ({r['reached']}/{r['seeds']} seeds)"
    final = f"{100 * r['final']:.1f}%" + (f" ± {100 * r['final_std']:.1f}" if not math.isnan(r["final_std"]) else "")
    if r["diverged"]:
      final = (f"{final}; " if math.isfinite(r["final"]) else "") + "diverged at round " + ", ".join(
          map(str, r["diverged"]))
    cells = [format_value(r[k]) for k in varied] + [rounds]
    if "speedup" in r:
      cells.append(f"{r['speedup']:.1f}x" if r["speedup"] else "-")
    cells += [final, f"{100 * r['test']:.1f}%" if math.isfinite(r["test"]) else "-"]
    if "epsilon" in head:
      cells.append(f"{r['epsilon']:.2f}" if r["epsilon"] else "-")
    lines.append("| " + " | ".join(cells) + " |")
  if missing:
    lines.append(f"\n{missing} run(s) not finished: not counted.")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  del argv
  name, _ = load(FLAGS.sweep)
  root = FLAGS.root or default_root(name)
  rows, missing = table(FLAGS.sweep, root, FLAGS.metric, FLAGS.target, FLAGS.choose_over, FLAGS.baseline)
  text = markdown(rows, FLAGS.metric, FLAGS.target, missing)
  with open(os.path.join(root, "fed_report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  if rows:
    plot(os.path.join(root, "fed_report.png"), rows, FLAGS.metric, FLAGS.target, name)
  print(text, end="")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("sweep")
  app.run(main)
