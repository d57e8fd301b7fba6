"""Where a sweep's runs execute: this machine, a SLURM cluster, or a multi-host TPU VM slice.

Every backend launches `python -m experiments.run --flagfile=RUN/sweep.flags --workdir=RUN`
(on a TPU slice: the base flag file and the run's flags inline), so a run that stopped
half-way resumes from its checkpoints when launched again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Sequence

from launch.spec import REPO, Run, SweepError


@dataclasses.dataclass
class Planned:
  """A run to launch, with its workdir."""

  run: Run
  workdir: str

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, "-m", "experiments.run", f"--flagfile={self.workdir}/sweep.flags", f"--workdir={self.workdir}"]


# --- local -------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
  """The GPUs this machine shows (CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`)."""
  if os.environ.get("CUDA_VISIBLE_DEVICES"):
    return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d]
  if shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
  return []


def run_local(planned: Sequence[Planned], max_parallel: int, dry_run: bool) -> int:
  """Runs as subprocesses, at most `max_parallel` at once (and one GPU each when there are
  GPUs); each run's output goes to RUN/run.log. Returns how many failed."""
  gpus = visible_gpus()
  slots = min(max_parallel, len(gpus)) if gpus else max_parallel
  if dry_run:
    for i, p in enumerate(planned):
      env = f"CUDA_VISIBLE_DEVICES={gpus[i % slots]} " if gpus else ""
      print(env + shlex.join(p.command()))
    return 0
  queue, active, failed = list(planned), {}, []  # active: slot -> (Planned, Popen, log file)
  while queue or active:
    for slot in [s for s in range(slots) if s not in active][:len(queue)]:
      p = queue.pop(0)
      env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[slot]} if gpus else {})}
      log = open(os.path.join(p.workdir, "run.log"), "a", encoding="utf-8")  # pylint: disable=consider-using-with
      print(f"start {p.run.name}" + (f" on GPU {gpus[slot]}" if gpus else ""), flush=True)
      active[slot] = (p, subprocess.Popen(p.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    time.sleep(0.2)
    for slot, (p, proc, log) in list(active.items()):
      if proc.poll() is not None:
        log.close()
        del active[slot]
        done = proc.returncode == 0 and os.path.exists(os.path.join(p.workdir, "summary.json"))
        print(f"{'done' if done else f'FAILED (exit {proc.returncode})'} {p.run.name}"
              + ("" if done else f": see {p.workdir}/run.log"), flush=True)
        if not done:
          failed.append(p)
  return len(failed)


# --- SLURM -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  partition: str = ""
  time: str = "1:00:00"
  ntasks_per_run: int = 1  # processes per run (one jax.distributed run across them)
  cpus_per_task: int = 1
  gpus_per_task: int = 0
  mem: str = ""
  array_parallel: int = 0  # at most this many array tasks at once (0: no limit)


def slurm_directives(job_name: str, tasks: int, output: str, options: SlurmOptions) -> list[str]:
  """The `#SBATCH` options of a job array of `tasks` tasks."""
  throttle = f"%{options.array_parallel}" if options.array_parallel else ""
  directives = [f"--job-name={job_name}", f"--array=0-{tasks - 1}{throttle}", f"--output={output}",
                f"--ntasks={options.ntasks_per_run}", f"--cpus-per-task={options.cpus_per_task}",
                f"--time={options.time}"]
  if options.partition:
    directives.append(f"--partition={options.partition}")
  if options.gpus_per_task:
    directives.append(f"--gpus-per-task={options.gpus_per_task}")
  if options.mem:
    directives.append(f"--mem={options.mem}")
  return directives


def sbatch(path: str, dry_run: bool) -> str | None:
  """Submits the script at `path` (with `dry_run`, prints it instead); returns the job id."""
  if dry_run:
    print(open(path, encoding="utf-8").read(), end="")
    print(f"(dry run: not submitted; sbatch --parsable {path})")
    return None
  if not shutil.which("sbatch"):
    raise SweepError("--backend=slurm needs sbatch on PATH (run on the cluster's login node)")
  proc = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SweepError(f"sbatch failed: {proc.stderr.strip()}")
  return proc.stdout.strip().split(";")[0]


def sbatch_script(name: str, root: str, planned: Sequence[Planned], options: SlurmOptions,
                  python: str = sys.executable) -> str:
  """One `sbatch --array` script: array task i runs planned[i] (through srun, so that a run of
  several tasks is one multi-process run)."""
  directives = slurm_directives(name, len(planned), f"{root}/slurm/%A_%a.out", options)
  runs = "\n".join(f"  {shlex.quote(p.workdir)}" for p in planned)
  return f"""#!/bin/bash
# Sweep {name}: {len(planned)} runs, one array task each. Written by launch.sweep.
{chr(10).join('#SBATCH ' + d for d in directives)}
set -euo pipefail
cd {shlex.quote(REPO)}
RUNS=(
{runs}
)
RUN="${{RUNS[$SLURM_ARRAY_TASK_ID]}}"
echo "array task $SLURM_ARRAY_TASK_ID: $RUN on $(hostname)"
srun --kill-on-bad-exit=1 {shlex.quote(python)} -m experiments.run --flagfile="$RUN/sweep.flags" --workdir="$RUN"
"""


def submit_slurm(name: str, root: str, planned: Sequence[Planned], options: SlurmOptions, dry_run: bool) -> str | None:
  """Writes ROOT/slurm/sweep.sbatch and submits it; records the job in ROOT/slurm/jobs.jsonl."""
  os.makedirs(os.path.join(root, "slurm"), exist_ok=True)
  path = os.path.join(root, "slurm", "sweep.sbatch")
  with open(path, "w", encoding="utf-8") as f:
    f.write(sbatch_script(name, root, planned, options))
  job = sbatch(path, dry_run)
  if job is None:
    return None
  with open(os.path.join(root, "slurm", "jobs.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"job": job, "runs": [p.run.name for p in planned], "time": time.time()}) + "\n")
  print(f"submitted job array {job} ({len(planned)} tasks): {path}")
  return job


def slurm_jobs(root: str) -> list[dict]:
  path = os.path.join(root, "slurm", "jobs.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def slurm_queue(root: str) -> dict[str, str]:
  """Run name -> SLURM state (PENDING, RUNNING...) of this sweep's array tasks still queued."""
  jobs = slurm_jobs(root)
  if not jobs or not shutil.which("squeue"):
    return {}
  out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(j["job"] for j in jobs)],
                       capture_output=True, text=True, check=False).stdout
  states = {}
  for line in out.splitlines():
    task, _, state = line.partition(" ")
    job, _, index = task.partition("_")
    for j in jobs:
      if j["job"] == job and index.isdigit() and int(index) < len(j["runs"]):
        states[j["runs"][int(index)]] = state
  return states


# --- TPU VM slices -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TpuOptions:
  tpu: str = ""
  zone: str = ""
  project: str = ""
  repo_dir: str = "~/nets"  # the repository on every worker
  python: str = "python3"


def tpu_commands(planned: Sequence[Planned], root: str, options: TpuOptions) -> list[list[str]]:
  """One `gcloud ... ssh --worker=all` per run: every worker of the slice starts the same
  command and `--distributed.mode=on` connects them (JAX reads the slice's topology). The runs go
  one after another, each over the whole slice; ROOT must be storage every worker shares."""
  if not options.tpu or not options.zone:
    raise SweepError("--backend=tpu_vm needs --tpu and --zone")
  commands = []
  for p in planned:
    run = p.run
    flags = [f"--flagfile={run.base}", *(f"--flagfile={o}" for o in run.overlays), *run.args(), f"--workdir={root}/{run.name}", "--distributed.mode=on"]
    remote = f"cd {options.repo_dir} && {options.python} -m experiments.run " + " ".join(map(shlex.quote, flags))
    command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", options.tpu, f"--zone={options.zone}"]
    if options.project:
      command.append(f"--project={options.project}")
    commands.append(command + ["--worker=all", f"--command={remote}"])
  return commands


def run_tpu_vm(planned: Sequence[Planned], root: str, options: TpuOptions, dry_run: bool) -> int:
  commands = tpu_commands(planned, root, options)
  if dry_run:
    for command in commands:
      print(shlex.join(command))
    return 0
  if not shutil.which("gcloud"):
    raise SweepError("--backend=tpu_vm needs the gcloud CLI on PATH")
  failed = 0
  for p, command in zip(planned, commands):
    print(f"start {p.run.name} on TPU {options.tpu}", flush=True)
    failed += subprocess.run(command, check=False).returncode != 0
  return failed

