"""What a search leaves in its folder: the leaderboard, the best trial's flag file, the Pareto
plot, the progress plot, search.json; and the final retrain of the best trial.

    python -m launch.search --space=... --report     # writes these from the study so far
    python -m launch.search --space=... --retrain    # the best trial, retrained over seeds
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from typing import Any, Sequence

from launch import space as space_lib
from launch.spec import REPO, format_value

COLUMNS = ("rank", "trial", "state", "value", "num_params", "steps", "step_time_ms", "wall_s")


def _trials(study: Any) -> list[Any]:
  return study.get_trials(deepcopy=False)


def rows(study: Any, space: space_lib.Space) -> list[dict[str, Any]]:
  """One row per trial trained (complete, then pruned; failed last), best first: its value
  (a pruned trial's: its last evaluation's), parameters, steps, time and choices."""
  import optuna  # pylint: disable=g-import-not-at-top
  states = optuna.trial.TrialState
  sign = -1 if space.direction == "maximize" else 1
  out = []
  for t in _trials(study):
    if t.state not in (states.COMPLETE, states.PRUNED, states.FAIL) or t.user_attrs.get("over_budget"):
      continue
    if t.state == states.FAIL and t.system_attrs.get("nets:dead"):
      continue  # its retry has the row
    steps = max(t.intermediate_values, default=0)
    value = t.values[0] if t.state == states.COMPLETE else (t.intermediate_values[steps] if steps else math.nan)
    wall = t.user_attrs.get("wall_s")
    out.append({"trial": t.number, "state": t.state.name.lower(), "value": value,
                "num_params": t.user_attrs.get("num_params"), "steps": t.user_attrs.get("step", steps),
                "step_time_ms": t.user_attrs.get("step_time_ms"), "wall_s": wall, "params": dict(t.params),
                "workdir": t.user_attrs.get("workdir"), "error": t.user_attrs.get("error", "")})
  order = {"complete": 0, "pruned": 1, "fail": 2}
  out.sort(key=lambda r: (order[r["state"]], sign * r["value"] if not math.isnan(r["value"]) else math.inf))
  for i, r in enumerate(out, 1):
    r["rank"] = i
  return out


def best_trial(study: Any, space: space_lib.Space) -> Any:
  """The best completed trial by the space's metric (with two objectives: by the first)."""
  import optuna  # pylint: disable=g-import-not-at-top
  done = [t for t in _trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
  if not done:
    return None
  pick = max if space.direction == "maximize" else min
  return pick(done, key=lambda t: t.values[0])


def pareto_front(points: Sequence[tuple[float, float]], maximize: bool) -> list[int]:
  """Indices of the points (cost, metric) that no other point beats in both: no lower or equal
  cost with a better or equal metric, one of them strictly."""
  front = []
  for i, (c, m) in enumerate(points):
    better = (lambda a, b: a >= b) if maximize else (lambda a, b: a <= b)
    strictly = (lambda a, b: a > b) if maximize else (lambda a, b: a < b)
    if not any(j != i and c2 <= c and better(m2, m) and (c2 < c or strictly(m2, m)) for j, (c2, m2) in enumerate(points)):
      front.append(i)
  return sorted(front, key=lambda i: points[i][0])


def best_flagfile(study: Any, space: space_lib.Space, root: str) -> str | None:
  """Writes ROOT/best.flags: the best trial's flags, runnable as they are with experiments.run."""
  trial = best_trial(study, space)
  if trial is None:
    return None
  path = os.path.join(root, trial.user_attrs["workdir"], "trial.flags")
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if not line.startswith("#")]
  out = os.path.join(root, "best.flags")
  with open(out, "w", encoding="utf-8") as f:
    f.write(f"# The best trial ({trial.number}) of the search in {root}: {space.metric} {trial.values[0]:.4g}, "
            f"{trial.user_attrs.get('num_params', 0):,} parameters.\n# Its choices: "
            f"{', '.join(f'{k}={format_value(v)}' for k, v in trial.params.items())}\n"
            "# Reproduce its validation figure: python -m experiments.run --flagfile=THIS --workdir=DIR\n")
    f.writelines(lines)
  return out


def table(rs: list[dict[str, Any]], metric: str, top: int = 10) -> str:
  """The leaderboard's first rows as text."""
  head = f"{'rank':>4} {'trial':>5} {'state':>8} {metric:>14} {'params':>9} {'steps':>6} {'ms/step':>8}  choices"
  lines = [head]
  for r in rs[:top]:
    choices = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
    lines.append(f"{r['rank']:>4} {r['trial']:>5} {r['state']:>8} {r['value']:>14.4f} "
                 f"{r['num_params'] or 0:>9,} {r['steps'] or 0:>6} {r['step_time_ms'] or math.nan:>8.3f}  {choices}")
  return "\n".join(lines)


def write(study: Any, space: space_lib.Space, root: str, settings: Any) -> dict[str, Any]:
  """Writes the leaderboard (csv, jsonl, printed), best.flags, pareto.png, progress.png and
  search.json; returns search.json's content."""
  from launch import study as study_lib  # pylint: disable=g-import-not-at-top
  rs = rows(study, space)
  with open(os.path.join(root, "leaderboard.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rs)
  names = sorted({k for r in rs for k in r["params"]})
  with open(os.path.join(root, "leaderboard.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow([*COLUMNS, *names])
    for r in rs:
      w.writerow([r[c] for c in COLUMNS] + [r["params"].get(n, "") for n in names])
  c = study_lib.counts(study)
  print(table(rs, space.metric))
  best = best_flagfile(study, space, root)
  plots = plot_pareto(rs, space, root), plot_progress(study, space, root)
  trial = best_trial(study, space)
  summary = {"space": settings.space, "metric": space.metric, "direction": space.direction,
             "settings": {k: v for k, v in vars(settings).items()}, "counts": c,
             "best": None if trial is None else {"trial": trial.number, "value": trial.values[0],
                                                 "num_params": trial.user_attrs.get("num_params"),
                                                 "params": trial.params,
                                                 "flagfile": best},
             "trial_wall_s": sum(r["wall_s"] or 0 for r in rs)}
  with open(os.path.join(root, "search.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed, {c['refused']} refused for their "
        f"size, {c['running']} running, {c['waiting']} queued; best: "
        + (f"trial {trial.number}, {space.metric} {trial.values[0]:.4g} ({best})" if trial else "none yet"))
  print(f"outputs: {root}/leaderboard.csv, " + ", ".join(p for p in plots if p))
  return summary


def plot_pareto(rs: list[dict[str, Any]], space: space_lib.Space, root: str) -> str | None:
  """The metric against parameters for every trained trial (complete: filled; pruned: hollow),
  the front of the complete ones joined."""
  done = [r for r in rs if r["state"] == "complete" and r["num_params"]]
  if not done:
    return None
  fig, ax = _pyplot().subplots(figsize=(6, 4))
  pruned = [r for r in rs if r["state"] == "pruned" and r["num_params"] and not math.isnan(r["value"])]
  ax.scatter([r["num_params"] for r in pruned], [r["value"] for r in pruned], facecolors="none",
             edgecolors="tab:gray", s=18, label="pruned (last evaluation)")
  ax.scatter([r["num_params"] for r in done], [r["value"] for r in done], s=18, color="tab:blue", label="complete")
  front = pareto_front([(r["num_params"], r["value"]) for r in done], space.direction == "maximize")
  ax.plot([done[i]["num_params"] for i in front], [done[i]["value"] for i in front], "-o", color="tab:red", ms=4,
          label="Pareto front")
  ax.set_xscale("log")
  ticker = _pyplot().matplotlib.ticker
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))  # 1,000 2,000 5,000 ...
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("parameters")
  ax.set_ylabel(space.metric)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, os.path.join(root, "pareto.png"))


def progress(study: Any, space: space_lib.Space) -> list[tuple[int, float, float]]:
  """(trial number, seconds since the first trial started, best value so far) at each
  completed trial, in the order they completed."""
  import optuna  # pylint: disable=g-import-not-at-top
  done = sorted((t for t in _trials(study) if t.state == optuna.trial.TrialState.COMPLETE),
                key=lambda t: t.datetime_complete)
  starts = [t.datetime_start for t in _trials(study) if t.datetime_start is not None]
  if not done or not starts:
    return []
  t0, best, out = min(starts), None, []
  for t in done:
    v = t.values[0]
    best = v if best is None else (max(best, v) if space.direction == "maximize" else min(best, v))
    out.append((t.number, (t.datetime_complete - t0).total_seconds(), best))
  return out


def plot_progress(study: Any, space: space_lib.Space, root: str) -> str | None:
  points = progress(study, space)
  if not points:
    return None
  fig, axes = _pyplot().subplots(1, 2, figsize=(9, 3.5), sharey=True)
  axes[0].step(range(1, len(points) + 1), [p[2] for p in points], where="post")
  axes[0].set_xlabel("trials completed")
  axes[1].step([p[1] / 60 for p in points], [p[2] for p in points], where="post")
  axes[1].set_xlabel("wall time (min)")
  axes[0].set_ylabel(f"best {space.metric} so far")
  for ax in axes:
    ax.grid(alpha=0.3)
  return _save(fig, os.path.join(root, "progress.png"))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _pyplot().close(fig)
  return path


# --- the final retrain ---------------------------------------------------------------------------

def retrain(study: Any, space: space_lib.Space, root: str, seeds: Sequence[int], on_validation: bool,
            python: str = sys.executable) -> dict[str, Any]:
  """Retrains the best trial's architecture from scratch, once per seed, with the space's
  retrain_flags, evaluating the test split (the base flag file's --eval_split) once at the end
  of each; writes ROOT/retrain.json (each seed's summary, the mean and spread)."""
  trial = best_trial(study, space)
  if trial is None:
    raise space_lib.SpaceError(f"the study in {root} has no completed trial to retrain")
  chosen = space.choose(space_lib.RandomChooser(None, trial.params))  # the trial's choices, as flags
  runs = []
  for seed in seeds:
    # On train + validation nothing is held out to watch: evaluate only after the last step,
    # when the test split is read (otherwise the evaluations during training are on validation).
    extra = {**space.retrain_flags, "seed": seed,
             **({"validation_fraction": 0, "eval_every": 0, "best_metric": "", "early_stopping_patience": 0}
                if on_validation else {})}
    workdir = os.path.join(root, "retrain", f"seed={seed}")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "retrain.flags")
    with open(path, "w", encoding="utf-8") as f:
      f.write(f"# The best trial ({trial.number}) of {root}, retrained from scratch (seed {seed}).\n")
      f.writelines(line + "\n" for line in space.lines(chosen, extra))
    if not os.path.exists(os.path.join(workdir, "summary.json")):
      print(f"retrain seed {seed}: {workdir}", flush=True)
      with open(os.path.join(workdir, "run.log"), "a", encoding="utf-8") as log:
        code = subprocess.run([python, "-m", "experiments.run", f"--flagfile={path}", f"--workdir={workdir}"],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
      if code:
        raise RuntimeError(f"the retrain of seed {seed} failed (exit {code}): see {workdir}/run.log")
    with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
      runs.append({"seed": seed, **json.load(f)})
  test = space.metric.replace("val/", "eval/", 1)
  values = [r[test] for r in runs if test in r]
  out = {"trial": trial.number, "params": trial.params, "search_value": trial.values[0],
         "num_params": runs[0].get("num_params"), "metric": test, "seeds": list(seeds),
         "on_validation": on_validation, "values": values,
         "mean": statistics.fmean(values) if values else None,
         "std": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": runs}
  with open(os.path.join(root, "retrain.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  print(f"retrained trial {trial.number} ({out['num_params']:,} parameters) over seeds {list(seeds)}: {test} "
        + ", ".join(f"{v:.4f}" for v in values) + f"; mean {out['mean']:.4f} +- {out['std']:.4f}")
  return out
