"""A search's study: its settings, storage, sampler and pruner; the locks that let many workers
share it; and the bookkeeping that makes a killed search go on where it stopped.

The study lives in Optuna's storage (a journal file by default: safe on shared file systems;
or a database URL). The search's folder holds a lock file taken while a worker claims a trial
(`.search.lock`) and, in each trial's folder, the lock its worker holds while the trial runs
(`.trial.lock`): a running trial whose lock is free has no live worker (`reclaim`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
from typing import Any, Iterator

from launch.spec import SweepError

WORKER = "nets:worker"  # a trial's system attributes: who runs it,
DEAD = "nets:dead"  # and, on a failed trial, that its worker died (it was queued again)
OVER = "over_budget"  # user attribute of trials refused for --max_params


class SearchError(SweepError):
  """Bad input, found before any trial runs."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """A search's choices that its study keeps: a study is one strategy on one space."""

  space: str
  metric: str
  direction: str
  max_params: int
  second_objective: str
  sampler: str
  pruner: str
  population: int = 20  # regularised evolution's P and S
  tournament: int = 5
  reduction_factor: int = 3  # ASHA's and Hyperband's eta

  @property
  def directions(self) -> list[str]:
    return [self.direction] + (["minimize"] if self.second_objective else [])


def parse_duration(text: str) -> float:
  """'3600', '90s', '90m', '1.5h' -> seconds; '' -> 0 (none)."""
  if not text:
    return 0.0
  m = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", text)
  if not m:
    raise SearchError(f"--time_budget={text!r} is not a duration (e.g. 3600, 90m, 1h)")
  seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
  if seconds <= 0:
    raise SearchError(f"--time_budget={text!r}: a budget of 0 runs nothing")
  return seconds


# --- storage and study ---------------------------------------------------------------------------

def storage_path(spec: str, root: str) -> tuple[str, str]:
  """('journal', path) or ('rdb', url)."""
  if not spec:
    return "journal", os.path.join(root, "study.journal")
  if "://" in spec:
    return "rdb", spec
  return "journal", os.path.abspath(os.path.expanduser(spec))


def check_storage(spec: str, root: str) -> None:
  """One line if the study's storage (a file) or the search's folder cannot be written."""
  kind, where = storage_path(spec, root)
  paths = [os.path.join(root, ".write_test")]
  if kind == "journal":
    paths.append(where)
  elif where.startswith("sqlite:///"):
    paths.append(where[len("sqlite:///"):])
  for path in paths:
    try:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      with open(path, "a", encoding="utf-8"):
        pass
      if path.endswith(".write_test"):
        os.remove(path)
    except OSError as e:
      what = "--root" if path.endswith(".write_test") else "--storage"
      raise SearchError(f"{what}: {os.path.dirname(path) if what == '--root' else path} cannot be written "
                        f"({e.strerror or e})") from None


def open_storage(spec: str, root: str):
  import optuna  # pylint: disable=g-import-not-at-top
  kind, where = storage_path(spec, root)
  if kind == "rdb":
    return optuna.storages.RDBStorage(where)
  from optuna.storages.journal import JournalFileBackend  # pylint: disable=g-import-not-at-top
  return optuna.storages.JournalStorage(JournalFileBackend(where))


def make_sampler(settings: Settings, seed: int):
  import optuna  # pylint: disable=g-import-not-at-top
  from launch.evolution import RegularizedEvolutionSampler  # pylint: disable=g-import-not-at-top
  if settings.sampler == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  if settings.sampler == "evolution":
    return RegularizedEvolutionSampler(settings.population, settings.tournament, seed=seed)
  if settings.sampler == "nsga2":
    return optuna.samplers.NSGAIISampler(seed=seed)
  # TPE over the choices jointly, grouped by which choices a trial made (conditional spaces);
  # with several workers, running trials count as their likely outcome (constant liar).
  with _quiet_experimental():  # (Optuna marks these options experimental)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(settings: Settings, eval_every: int, steps: int):
  import optuna  # pylint: disable=g-import-not-at-top
  if settings.pruner == "asha":
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every, reduction_factor=settings.reduction_factor)
  if settings.pruner == "hyperband":
    return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=steps,
                                          reduction_factor=settings.reduction_factor)
  if settings.pruner == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=eval_every)
  return optuna.pruners.NopPruner()


def open_study(name: str, root: str, settings: Settings, storage: str = "", seed: int = 0, eval_every: int = 1,
               steps: int = 1):
  """The study, created on first use; a study made with other settings is refused. The pruner's
  rungs start at `eval_every` steps (a trial's first evaluation) and end at `steps`."""
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = open_storage(storage, root)
  study = optuna.create_study(study_name=name, storage=storage, directions=settings.directions, load_if_exists=True,
                              sampler=make_sampler(settings, seed), pruner=make_pruner(settings, eval_every, steps))
  saved = study.user_attrs.get("settings")
  if saved is None:
    study.set_user_attr("settings", dataclasses.asdict(settings))
  elif saved != dataclasses.asdict(settings):
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in dataclasses.asdict(settings).items()
               if saved.get(k) != v]
    raise SearchError(f"the study in {root} was made with other settings ({'; '.join(changed)}): a study is one "
                      "strategy on one space; choose another --root to search afresh")
  return study


def load_study(name: str, root: str, storage: str = ""):
  """An existing study (for its outputs and the retrain), with the settings it was made with."""
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  kind, where = storage_path(storage, root)
  if kind == "journal" and not os.path.exists(where):
    raise SearchError(f"no search in {root} (no {where}): run the search first")
  try:
    study = optuna.load_study(study_name=name, storage=open_storage(storage, root))
  except KeyError:
    raise SearchError(f"the storage of {root} holds no study {name!r}") from None
  return study, Settings(**study.user_attrs["settings"])


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """An exclusive fcntl lock on `path` (a shared file system's POSIX locks across machines)."""
  with open(path, "a", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class TrialLock:
  """Held by the worker running a trial, for as long as it runs (TRIAL/.trial.lock). The kernel
  drops a dead process's lock: a running trial whose lock can be taken has no live worker."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.file = open(os.path.join(workdir, ".trial.lock"), "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def try_take(self) -> bool:
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError:
      return False

  def release(self) -> None:
    fcntl.flock(self.file, fcntl.LOCK_UN)
    self.file.close()


def trial_dir(root: str, trial: Any) -> str:
  """A trial's folder (a trial or frozen trial): its original's, when it is a retry (so its run
  resumes)."""
  attrs = trial.system_attrs if hasattr(trial, "system_attrs") else trial.storage.get_trial(trial._trial_id).system_attrs  # pylint: disable=protected-access
  original = attrs.get("failed_trial", trial.number)
  return os.path.join(root, "trials", f"{original:04d}")


def reclaim(study: Any, root: str) -> int:
  """Marks failed every running trial whose worker is gone, and queues it again with the same
  choices (at most twice). Called under the search's lock. Returns how many."""
  import optuna  # pylint: disable=g-import-not-at-top
  count = 0
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    lock = TrialLock(trial_dir(root, trial))
    if not lock.try_take():  # its worker is alive
      lock.file.close()
      continue
    lock.release()
    requeue(study, trial._trial_id)  # pylint: disable=protected-access
    print(f"trial {trial.number}: its worker ({trial.system_attrs.get(WORKER, '?')}) is gone; queued again",
          flush=True)
    count += 1
  return count


def requeue(study: Any, trial_id: int, max_retry: int = 2) -> None:
  """Marks a running trial failed (its worker died or was stopped) and queues a trial with the
  same choices, which trains in the same folder (its run resumes from its checkpoint)."""
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.storages import RetryHeartbeatStaleTrialCallback  # pylint: disable=g-import-not-at-top
  study._storage.set_trial_system_attr(trial_id, DEAD, True)  # pylint: disable=protected-access
  study._storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)  # pylint: disable=protected-access
  with _quiet_experimental():  # (Optuna marks the callback experimental)
    RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)(  # (its pruner's history)
        study, study._storage.get_trial(trial_id))  # pylint: disable=protected-access


@contextlib.contextmanager
def _quiet_experimental():
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    yield


def counts(study: Any) -> dict[str, int]:
  """Trials by what they count as: trained (complete, pruned, failed by the run), running,
  waiting (queued again), refused (--max_params) and dead (their worker died)."""
  import optuna  # pylint: disable=g-import-not-at-top
  states = optuna.trial.TrialState
  out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "refused": 0, "dead": 0}
  for t in study.get_trials(deepcopy=False):
    if t.state == states.COMPLETE:
      out["complete"] += 1
    elif t.state == states.PRUNED:
      out["refused" if t.user_attrs.get(OVER) else "pruned"] += 1
    elif t.state == states.FAIL:
      out["dead" if t.system_attrs.get(DEAD) else "failed"] += 1
    elif t.state == states.RUNNING:
      out["running"] += 1
    elif t.state == states.WAITING:
      out["waiting"] += 1
  return out


def spent(c: dict[str, int]) -> int:
  """Trials that count against --trials: trained, training, or queued to train again."""
  return c["complete"] + c["pruned"] + c["failed"] + c["running"] + c["waiting"]


