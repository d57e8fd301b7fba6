"""Launch a sweep: many runs of one experiment, locally, on SLURM, or on a TPU VM slice.

    python -m launch.sweep --sweep=launch/sweeps/NAME.py --backend=local [--max_parallel=2] [--dry_run]
    python -m launch.sweep --sweep=launch/sweeps/NAME.py --backend=slurm [--partition=gpu --gpus_per_task=1] [--wait]
    python -m launch.sweep --sweep=launch/sweeps/NAME.py --backend=tpu_vm --tpu=NAME --zone=ZONE --dry_run
    python -m launch.sweep --sweep=launch/sweeps/NAME.py --status      # done / running / pending / failed
    python -m launch.sweep --sweep=launch/sweeps/NAME.py --collect     # every summary, into ROOT/summaries.jsonl

Each run gets a workdir ROOT/RUN_NAME (ROOT: --root, default runs/sweeps/NAME) holding its
resolved flag file `sweep.flags`. Launching again skips the runs that finished (their
`summary.json` exists) and relaunches the others in place, so a run that stopped half-way
resumes from its checkpoints. `python -m launch.report --sweep=...` makes the table and plot.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

from launch import backends
from launch.spec import Run, SweepError, default_root, expand, load, resolved_flagfile

flags.DEFINE_string("sweep", None, "The sweep file (launch/sweeps/NAME.py).")
flags.DEFINE_enum("backend", "local", ["local", "slurm", "tpu_vm"], "Where the runs execute.")
flags.DEFINE_string("root", "", "Folder of the sweep's runs (default: runs/sweeps/NAME).")
flags.DEFINE_bool("dry_run", False, "Write the run folders and print what would be launched; launch nothing.")
flags.DEFINE_bool("status", False, "Print each run's state and exit.")
flags.DEFINE_bool("collect", False, "Collect the finished runs' summaries into ROOT/summaries.jsonl and exit.")
flags.DEFINE_integer("max_parallel", 1, "local: runs at once (at most one per GPU when there are GPUs).", lower_bound=1)
flags.DEFINE_string("partition", "", "slurm: partition (default: the cluster's).")
flags.DEFINE_string("time", "1:00:00", "slurm: time limit of each array task.")
flags.DEFINE_integer("ntasks_per_run", 1, "slurm: processes per run; more than 1 makes each run multi-process "
                     "(srun starts them and experiments.run connects them).", lower_bound=1)
flags.DEFINE_integer("cpus_per_task", 1, "slurm: CPUs per process.", lower_bound=1)
flags.DEFINE_integer("gpus_per_task", 0, "slurm: GPUs per process.", lower_bound=0)
flags.DEFINE_string("mem", "", "slurm: memory per node, e.g. 16G (default: the cluster's).")
flags.DEFINE_integer("array_parallel", 0, "slurm: at most this many array tasks at once (0: no limit).", lower_bound=0)
flags.DEFINE_bool("wait", False, "slurm: wait until the job array finishes, then print the status.")
flags.DEFINE_string("tpu", "", "tpu_vm: the TPU VM (slice) name.")
flags.DEFINE_string("zone", "", "tpu_vm: its zone.")
flags.DEFINE_string("project", "", "tpu_vm: its project (default: gcloud's).")
flags.DEFINE_string("repo_dir", "~/nets", "tpu_vm: this repository's folder on every worker.")
FLAGS = flags.FLAGS


def state(run: Run, root: str, queued: dict[str, str]) -> str:
  """done (summary.json), RUNNING/PENDING (SLURM's word), started (has a workdir log or
  checkpoint but is not running: failed or stopped), or new."""
  workdir = os.path.join(root, run.name)
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return "done"
  if run.name in queued:
    return queued[run.name].lower()
  if os.path.exists(os.path.join(workdir, "flags.flags")):
    return "stopped"  # it started; it has no summary and is not queued: failed or killed
  return "new"


def prepare(name: str, root: str, runs: list[Run]) -> list[backends.Planned]:
  """Writes each unfinished run's folder and flag file and the sweep's manifest; returns
  the runs to launch."""
  os.makedirs(root, exist_ok=True)
  planned = []
  for run in runs:
    workdir = os.path.join(root, run.name)
    if os.path.exists(os.path.join(workdir, "summary.json")):
      continue
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep.flags"), "w", encoding="utf-8") as f:
      f.write(resolved_flagfile(run))
    planned.append(backends.Planned(run, workdir))
  manifest = {"sweep": name, "runs": [{"name": r.name, "base": r.base, "overlays": list(r.overlays),
                                       "variant": dict(r.variant), "point": dict(r.point), "seed": r.seed,
                                       "flags": dict(r.flags)} for r in runs]}
  with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return planned


def print_status(runs: list[Run], root: str) -> dict[str, int]:
  queued = backends.slurm_queue(root)
  counts: dict[str, int] = {}
  for run in runs:
    s = state(run, root, queued)
    counts[s] = counts.get(s, 0) + 1
    print(f"{s:>8}  {run.name}")
  print(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
  return counts


def collect(runs: list[Run], root: str) -> int:
  rows = []
  for run in runs:
    path = os.path.join(root, run.name, "summary.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        rows.append({"run": run.name, **dict(run.point), "seed": run.seed, **json.load(f)})
  out = os.path.join(root, "summaries.jsonl")
  with open(out, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  print(f"{len(rows)} of {len(runs)} runs finished; their summaries: {out}")
  return len(rows)


def wait_for_slurm(root: str, poll_s: float = 2.0) -> None:
  while backends.slurm_queue(root):
    time.sleep(poll_s)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.sweep:
    raise app.UsageError("--sweep=launch/sweeps/NAME.py is required")
  try:
    name, sweep = load(FLAGS.sweep)
    runs = expand(sweep)
  except SweepError as e:
    raise app.UsageError(str(e)) from None
  root = FLAGS.root or default_root(name)
  if FLAGS.backend != "tpu_vm":
    root = os.path.abspath(root)
  if FLAGS.status:
    print_status(runs, root)
    return
  if FLAGS.collect:
    collect(runs, root)
    return

  if FLAGS.backend == "tpu_vm":  # ROOT is on the workers' shared storage, not here: launch every run
    planned = [backends.Planned(run, os.path.join(root, run.name)) for run in runs]  # (a finished one
  else:                                                                             # only re-evaluates)
    planned = prepare(name, root, runs)
  print(f"sweep {name}: {len(runs)} runs, {len(runs) - len(planned)} done, {len(planned)} to launch "
        f"({FLAGS.backend}{', dry run' if FLAGS.dry_run else ''}); folder {root}", flush=True)
  if not planned:
    return
  try:
    if FLAGS.backend == "local":
      failed = backends.run_local(planned, FLAGS.max_parallel, FLAGS.dry_run)
    elif FLAGS.backend == "slurm":
      options = backends.SlurmOptions(FLAGS.partition, FLAGS.time, FLAGS.ntasks_per_run, FLAGS.cpus_per_task,
                                      FLAGS.gpus_per_task, FLAGS.mem, FLAGS.array_parallel)
      job = backends.submit_slurm(name, root, planned, options, FLAGS.dry_run)
      failed = 0
      if job and FLAGS.wait:
        wait_for_slurm(root)
        counts = print_status(runs, root)
        failed = len(runs) - counts.get("done", 0)
    else:
      options = backends.TpuOptions(FLAGS.tpu, FLAGS.zone, FLAGS.project, FLAGS.repo_dir)
      failed = backends.run_tpu_vm(planned, root, options, FLAGS.dry_run)
  except SweepError as e:
    raise app.UsageError(str(e)) from None
  if failed:
    print(f"{failed} run(s) failed; launch the sweep again to resume them", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
