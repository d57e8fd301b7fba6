"""Neural architecture search: many trials of a search space, chosen on validation data, on
one machine or a cluster, resumable at any point. Built on Optuna (the `search` extra).

    python -m launch.search --space=launch/spaces/NAME.py --trials=50 [--time_budget=1h]
        [--sampler=random|evolution|tpe|nsga2] [--pruner=none|asha|hyperband|median]
        [--max_params=N] [--second_objective=num_params|step_time] [--workers=N]
    python -m launch.search --space=... --backend=slurm --workers=8 [--partition=...] [--wait]
    python -m launch.search --space=... --report        # the leaderboard, best.flags and plots
    python -m launch.search --space=... --retrain [--retrain_seeds=0,1,2] [--retrain_on_validation]

A space file (launch/space.py) declares the flags a trial chooses. Each trial is a run of
experiments.run in ROOT/trials/NNNN (ROOT: --root, default runs/search/NAME), trained in the
search's process (`--trial_process=in_process`, the default) or as its own process
(`subprocess`), and scored by the space's validation metric; the test split is never read
during a search. The study (Optuna's journal file ROOT/study.journal, or --storage=sqlite:///...)
is shared by every worker: `--workers=N` starts N local worker processes, `--backend=slurm` a
job array of N tasks, each running trials until the budget is spent.

Killed at any point (kill -9 included), the same command goes on: a trial whose worker died
(its lock file is free) is marked failed and queued again with the same choices, and its run
resumes from its last checkpoint; it is counted once. `--trials` counts trials trained (pruned
ones too, not those refused for --max_params); `--time_budget` bounds this invocation.
Outputs in ROOT: leaderboard.csv/.jsonl (also printed), best.flags (runnable as it is),
pareto.png (the metric against parameters), progress.png (best so far against trials and
time), search.json; `--retrain` writes ROOT/retrain/ and retrain.json (the test split, read once
per seed).
"""

from __future__ import annotations

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()  # as experiments.run does: before anything else (it may restart the program once)

import os
import shlex
import subprocess
import sys
import time

from absl import app, flags
from absl import logging as absl_logging

from launch import backends
from launch import space as space_lib
from launch import study as study_lib
from launch import worker as worker_lib
from launch.spec import REPO, SweepError
from launch.study import SearchError, Settings

flags.DEFINE_string("space", None, "The search space file (launch/spaces/NAME.py).")
flags.DEFINE_string("root", "", "The search's folder (default: runs/search/NAME).")
flags.DEFINE_string("storage", "", "The study's storage: a journal file path (default ROOT/study.journal; safe on "
                    "shared file systems) or an Optuna database URL (sqlite:///PATH, postgresql://...).")
flags.DEFINE_enum("sampler", "tpe", ["random", "evolution", "tpe", "nsga2"], "How trials choose: random search; "
                  "regularised evolution (--population, --tournament); Optuna's TPE; NSGA-II (several objectives).")
flags.DEFINE_integer("seed", 0, "The sampler's seed (each worker adds its index).")
flags.DEFINE_integer("population", 20, "Regularised evolution: the population P (random trials until it is full).",
                     lower_bound=2)
flags.DEFINE_integer("tournament", 5, "Regularised evolution: the tournament sample S.", lower_bound=1)
flags.DEFINE_enum("pruner", "none", ["none", "asha", "hyperband", "median"], "Early stopping of poor trials at "
                  "their evaluations: asynchronous successive halving (ASHA), Hyperband, or the median rule.")
flags.DEFINE_integer("reduction_factor", 3, "ASHA / Hyperband: the reduction factor eta (rungs at eval_every x "
                     "eta^k steps).", lower_bound=2)
flags.DEFINE_integer("trials", 0, "Trials to train in all, over every worker and restart (0: until --time_budget).",
                     lower_bound=0)
flags.DEFINE_string("time_budget", "", "Wall time of this invocation, e.g. 3600, 90m, 1h (empty: none; no new trial "
                    "starts after it).")
flags.DEFINE_integer("max_params", -1, "Refuse architectures with more parameters, before training them (-1: the "
                     "space's max_params; 0: no limit).", lower_bound=-1)
flags.DEFINE_enum("second_objective", "", ["", "num_params", "step_time"], "A second objective, minimised: the "
                  "parameters, or the measured time of a training step (ms). The search then finds a Pareto front.")
flags.DEFINE_enum("trial_process", "in_process", ["in_process", "subprocess"], "Where a trial trains: in the "
                  "worker's process (data and compiled programs reused) or in a process of its own.")
flags.DEFINE_integer("workers", 1, "Worker processes sharing the study (local: started here; slurm: array tasks).",
                     lower_bound=1)
flags.DEFINE_enum("backend", "local", ["local", "slurm"], "Where the workers run.")
flags.DEFINE_string("partition", "", "slurm: partition (default: the cluster's).")
flags.DEFINE_string("time", "4:00:00", "slurm: time limit of each worker task.")
flags.DEFINE_integer("cpus_per_task", 1, "slurm: CPUs per worker.", lower_bound=1)
flags.DEFINE_integer("gpus_per_task", 0, "slurm: GPUs per worker.", lower_bound=0)
flags.DEFINE_string("mem", "", "slurm: memory per node, e.g. 16G.")
flags.DEFINE_bool("wait", False, "slurm: wait for the job array, then write the outputs.")
flags.DEFINE_bool("dry_run", False, "Check the space and storage and print what would run; run nothing.")
flags.DEFINE_bool("report", False, "Only write the outputs (leaderboard, best.flags, plots) of the study so far.")
flags.DEFINE_bool("retrain", False, "Retrain the best trial from scratch over --retrain_seeds with the space's "
                  "retrain_flags, and report its test metric (read once per seed).")
flags.DEFINE_list("retrain_seeds", ["0", "1", "2"], "--retrain: the seeds.")
flags.DEFINE_bool("retrain_on_validation", False, "--retrain: train on the validation examples too "
                  "(--validation_fraction=0).")
flags.DEFINE_integer("worker_index", -1, "(Set by the launcher: run as worker N and write no outputs.)")
FLAGS = flags.FLAGS

# --- launching workers ---------------------------------------------------------------------------

def worker_command(index: int, root: str, python: str = sys.executable) -> list[str]:
  """This command, as worker `index` (no outputs) of the search in `root`, with the same flags."""
  argv = [a for a in sys.argv[1:] if not a.startswith(("--workers", "--worker_index", "--backend", "--wait", "--root"))]
  return [python, "-m", "launch.search", *argv, f"--root={root}", f"--worker_index={index}"]


def run_local_workers(n: int, root: str) -> int:
  """Starts n worker processes here; each logs to ROOT/workers/N.log. Returns how many failed."""
  os.makedirs(os.path.join(root, "workers"), exist_ok=True)
  procs = []
  for i in range(n):
    log = open(os.path.join(root, "workers", f"{i}.log"), "a", encoding="utf-8")  # pylint: disable=consider-using-with
    procs.append((subprocess.Popen(worker_command(i, root), cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
  print(f"{n} workers started; their logs: {root}/workers/", flush=True)
  failed = 0
  for proc, log in procs:
    failed += proc.wait() != 0
    log.close()
  return failed


def sbatch_script(name: str, n: int, root: str, python: str = sys.executable) -> str:
  """A job array of n tasks, each one worker of the search."""
  options = backends.SlurmOptions(FLAGS.partition, FLAGS.time, 1, FLAGS.cpus_per_task, FLAGS.gpus_per_task, FLAGS.mem)
  directives = backends.slurm_directives(f"search-{name}", n, f"{root}/workers/%A_%a.out", options)
  command = shlex.join(worker_command(0, root, python)[:-1]) + ' --worker_index="$SLURM_ARRAY_TASK_ID"'
  return (f"#!/bin/bash\n# Search {name}: {n} workers sharing one study. Written by launch.search.\n"
          + "".join(f"#SBATCH {d}\n" for d in directives) + f"set -euo pipefail\ncd {shlex.quote(REPO)}\n{command}\n")


def submit_slurm(name: str, n: int, root: str) -> str | None:
  path = os.path.join(root, "workers", "search.sbatch")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(sbatch_script(name, n, root))
  job = backends.sbatch(path, FLAGS.dry_run)
  if job:
    print(f"submitted job array {job} ({n} workers): {path}", flush=True)
  return job


def wait_for_job(job: str, poll_s: float = 2.0) -> None:
  while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, check=False).stdout.strip():
    time.sleep(poll_s)


# --- main ----------------------------------------------------------------------------------------

def settings_from_flags(name: str, space: space_lib.Space) -> Settings:
  max_params = space.max_params if FLAGS.max_params < 0 else FLAGS.max_params
  if FLAGS.sampler == "evolution" and FLAGS.second_objective:
    raise SearchError("--sampler=evolution optimises one objective; with --second_objective use tpe or nsga2")
  if FLAGS.sampler == "nsga2" and not FLAGS.second_objective:
    raise SearchError("--sampler=nsga2 is for several objectives (--second_objective); use tpe, evolution or random")
  if FLAGS.pruner != "none" and FLAGS.second_objective:
    raise SearchError(f"--pruner={FLAGS.pruner} with --second_objective: Optuna prunes single-objective studies only")
  if FLAGS.tournament > FLAGS.population:
    raise SearchError(f"--tournament={FLAGS.tournament} exceeds --population={FLAGS.population}")
  return Settings(name, space.metric, space.direction, max_params, FLAGS.second_objective, FLAGS.sampler,
                  FLAGS.pruner, FLAGS.population, FLAGS.tournament, FLAGS.reduction_factor)


def main(argv: list[str]) -> None:
  if not FLAGS["verbosity"].present:  # our progress lines, not every library's INFO logs (as experiments.run)
    absl_logging.set_verbosity(absl_logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.space:
    raise app.UsageError("--space=launch/spaces/NAME.py is required")
  try:
    _main()
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _main() -> None:
  name, space = space_lib.load(FLAGS.space)
  root = os.path.abspath(FLAGS.root or os.path.join(REPO, "runs", "search", name))
  from launch import search_results  # pylint: disable=g-import-not-at-top
  if FLAGS.report or FLAGS.retrain:  # (with the settings the study was made with)
    study, settings = study_lib.load_study(name, root, FLAGS.storage)
    if FLAGS.retrain:
      search_results.retrain(study, space, root, [int(s) for s in FLAGS.retrain_seeds], FLAGS.retrain_on_validation)
    else:
      search_results.write(study, space, root, settings)
    return
  settings = settings_from_flags(name, space)
  budget_s = study_lib.parse_duration(FLAGS.time_budget)
  if not FLAGS.trials and not budget_s:
    raise SearchError("no budget: set --trials=N (> 0) or --time_budget (e.g. 1h)")
  study_lib.check_storage(FLAGS.storage, root)
  if FLAGS.worker_index < 0:  # (the launcher checked the space for its workers)
    checked = space_lib.check(space)
    print(f"search {name}: space checked ({checked} samples valid); sampler {settings.sampler}, pruner "
          f"{settings.pruner}" + (f", at most {settings.max_params:,} parameters" if settings.max_params else "")
          + f"; {FLAGS.workers} worker(s), {FLAGS.backend}; folder {root}", flush=True)
  deadline = time.time() + budget_s if budget_s else float("inf")
  if FLAGS.worker_index >= 0 or (FLAGS.workers == 1 and FLAGS.backend == "local"):
    if FLAGS.dry_run:
      return
    worker = worker_lib.Worker(name, space, settings, root, max(FLAGS.worker_index, 0), FLAGS.storage, FLAGS.seed,
                    FLAGS.trial_process)
    try:
      worker.work(FLAGS.trials, deadline)
    except KeyboardInterrupt:
      print("search interrupted: run the same command to go on", file=sys.stderr, flush=True)
      if FLAGS.worker_index < 0:
        search_results.write(worker.study, space, root, settings)
      sys.exit(130)
    if FLAGS.worker_index >= 0:
      return
    study = worker.study
  elif FLAGS.backend == "local":
    if FLAGS.dry_run:
      for i in range(FLAGS.workers):
        print(shlex.join(worker_command(i, root)))
      return
    failed = run_local_workers(FLAGS.workers, root)
    if failed:
      print(f"{failed} worker(s) failed: see {root}/workers/", file=sys.stderr)
    study = study_lib.open_study(name, root, settings, FLAGS.storage)
  else:
    job = submit_slurm(name, FLAGS.workers, root)
    if not job or not FLAGS.wait:
      return
    wait_for_job(job)
    study = study_lib.open_study(name, root, settings, FLAGS.storage)
  search_results.write(study, space, root, settings)


if __name__ == "__main__":
  app.run(main)
