"""A search's worker: it claims trials from the shared study, trains each (launch/trials.py),
and tells the study the result, until the search's budget is spent. `launch.search` runs one
in its own process, starts N of them locally, or submits them as a SLURM job array.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from experiments import runtime
from launch import space as space_lib
from launch import study as study_lib
from launch.study import SearchError, Settings


class Worker:
  """Runs trials until the budget is spent (`work`)."""

  def __init__(self, name: str, space: space_lib.Space, settings: Settings, root: str, index: int = 0,
               storage: str = "", seed: int = 0, trial_process: str = "in_process"):
    self.name, self.space, self.settings, self.root, self.index = name, space, settings, root, index
    probe = space_lib.config_of(space_lib.trial_lines(space, space_lib.sample(space, 0)[2]))
    try:  # XLA's CPU threads, malloc, the compilation cache: as each trial's run would set them
      runtime.before_jax(probe)
    except RuntimeError:  # JAX already started in this process (a search called from Python)
      pass
    self.study = study_lib.open_study(name, root, settings, storage, seed * 1000 + index, max(probe.eval_every, 1),
                                      probe.steps)
    from launch import trials  # pylint: disable=g-import-not-at-top
    self.train = trials.InProcess() if trial_process == "in_process" else trials.Subprocess()
    self.host = f"{socket.gethostname()}:{os.getpid()}"

  def work(self, max_trials: int, deadline: float) -> None:
    refused_in_a_row = 0
    while time.time() < deadline:
      with study_lib.file_lock(os.path.join(self.root, ".search.lock")):
        study_lib.reclaim(self.study, self.root)
        c = study_lib.counts(self.study)
        if max_trials and study_lib.spent(c) >= max_trials and not c["waiting"]:
          break
        trial = self.study.ask()
        lock = study_lib.TrialLock(study_lib.trial_dir(self.root, trial))
        if not lock.try_take():  # (cannot happen under the search's lock; kept as a guard)
          raise RuntimeError(f"trial {trial.number}'s folder is locked by another worker")
        self.study._storage.set_trial_system_attr(trial._trial_id, study_lib.WORKER, self.host)  # pylint: disable=protected-access
      try:
        refused = self.run(trial)
      finally:
        lock.release()
      if refused:  # never trained: no folder left behind
        folder = study_lib.trial_dir(self.root, trial)
        os.remove(os.path.join(folder, ".trial.lock"))
        os.rmdir(folder)
      refused_in_a_row = refused_in_a_row + 1 if refused else 0
      if refused_in_a_row >= 1000:
        raise SearchError(f"1000 trials in a row had more than --max_params={self.settings.max_params} parameters: "
                          "the space is almost all over the budget")

  def run(self, trial: Any) -> bool:
    """Trains one trial and tells the study; returns whether it was refused for its size."""
    import optuna  # pylint: disable=g-import-not-at-top
    from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top
    from launch import trials  # pylint: disable=g-import-not-at-top
    start = time.time()
    workdir = study_lib.trial_dir(self.root, trial)
    chosen = self.space.choose(space_lib.OptunaChooser(trial))
    lines = space_lib.trial_lines(self.space, chosen)
    trial.set_user_attr("workdir", os.path.relpath(workdir, self.root))
    try:
      config = space_lib.config_of(lines)
      num_params = trials.count_params(config)
    except ConfigError as e:  # a choice the space's checks could not see (shapes)
      trial.set_user_attr("error", str(e))
      self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
      print(f"trial {trial.number}: invalid ({e})", flush=True)
      return False
    trial.set_user_attr("num_params", num_params)
    if self.settings.max_params and num_params > self.settings.max_params:
      trial.set_user_attr(study_lib.OVER, True)
      self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      return True
    with open(os.path.join(workdir, "trial.flags"), "w", encoding="utf-8") as f:
      f.write(f"# Trial {trial.number} of search {self.name}: {json.dumps(trial.params)}\n")
      f.writelines(line + "\n" for line in lines)
    several = len(self.settings.directions) > 1

    def report(step: int, metrics: dict[str, float]) -> bool:
      value = metrics.get(self.space.metric)
      if value is None or several:  # (Optuna prunes single-objective studies only)
        return False
      trial.report(value, step)
      return trial.should_prune()

    print(f"trial {trial.number}: {', '.join(f'{k}={_short(v)}' for k, v in trial.params.items())}; "
          f"{num_params:,} parameters", flush=True)
    try:
      summary = self.train(lines, config, workdir, report)
    except trials.Pruned:
      trial.set_user_attr("wall_s", time.time() - start)
      self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      print(f"trial {trial.number}: pruned at step {max(trial_steps(self.study, trial), default=0)}", flush=True)
      return False
    except trials.Diverged as e:
      trial.set_user_attr("error", str(e))
      self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
      print(f"trial {trial.number}: diverged ({e})", flush=True)
      return False
    except (trials.Interrupted, KeyboardInterrupt):
      study_lib.requeue(self.study, trial._trial_id)  # pylint: disable=protected-access
      print(f"trial {trial.number}: interrupted; it resumes when the search is started again", flush=True)
      raise KeyboardInterrupt from None
    value = summary[self.space.metric] if self.space.metric in summary else None
    if value is None:
      raise SearchError(f"the trials report no {self.space.metric}; they report "
                        + ", ".join(k for k in summary if k.startswith(("val/", "eval/"))))
    if not several and summary.get("step") not in trial_steps(self.study, trial):  # the evaluation after the last step
      trial.report(value, summary["step"])
    step_ms = 1000.0 / summary["train_steps_per_sec"] if summary.get("train_steps_per_sec") else float("nan")
    for key in ("wall_time_s", "train_time_s", "compile_s", "train_steps_per_sec", "step"):
      if key in summary:
        trial.set_user_attr(key, summary[key])
    trial.set_user_attr("step_time_ms", step_ms)
    trial.set_user_attr("wall_s", time.time() - start)
    trial.set_user_attr("metrics", {k: v for k, v in summary.items() if k.startswith(("val/", "eval/"))})
    second = {"num_params": float(num_params), "step_time": step_ms}.get(self.settings.second_objective)
    self.study.tell(trial, [value] + ([second] if self.settings.second_objective else []))
    print(f"trial {trial.number}: {self.space.metric} {value:.4g} ({time.time() - start:.1f} s)", flush=True)
    return False


def trial_steps(study: Any, trial: Any) -> list[int]:
  return list(study._storage.get_trial(trial._trial_id).intermediate_values)  # pylint: disable=protected-access


def _short(value: Any) -> str:
  return f"{value:.3g}" if isinstance(value, float) else str(value)
