"""Multi-process start-up: `jax.distributed` when a run is launched as several processes.

A run is one of several processes when
- it is started with `--distributed.coordinator_address=HOST:PORT --distributed.num_processes=N
  --distributed.process_id=I`;
- it is a task of a SLURM step of more than one task (`srun -n N python -m experiments.run ...`);
  JAX reads the coordinator, the process count and the process id from SLURM's variables;
- it is a worker of a multi-host TPU slice (`gcloud compute tpus tpu-vm ssh --worker=all`)
  that says so with `--distributed.mode=on` (or whose TPU_WORKER_HOSTNAMES lists several hosts);
  `--distributed.mode=on` lets JAX detect any cluster it knows (TPU, SLURM, Open MPI).
Otherwise it is a single process and nothing is initialised (`--distributed.mode=off`: never).

On CPU the processes exchange gradients through gloo. A process that dies is noticed by the
coordination service within `heartbeat_timeout_s`, and every other process then stops with an
error instead of waiting for it forever.
"""

from __future__ import annotations

import os

import jax

from experiments.config import ConfigError


def slurm_tasks() -> int:
  """The number of tasks of this SLURM job step (0 outside SLURM)."""
  if "SLURM_JOB_ID" not in os.environ or "SLURM_PROCID" not in os.environ:
    return 0
  # srun sets SLURM_STEP_NUM_TASKS; a batch script itself (not started by srun) is one process
  # even when the job has several tasks.
  return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))


def tpu_workers() -> int:
  """The number of hosts of this TPU slice (0 when not on a TPU VM)."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES")
  return len(hosts.split(",")) if hosts else 0


def is_multiprocess() -> bool:
  return jax.process_count() > 1


MODES = ("auto", "on", "off")


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               heartbeat_timeout_s: int = 60, initialization_timeout_s: int = 300, mode: str = "auto") -> bool:
  """Connects this process to the others of its run, if it has any; returns whether it did.

  Call it before anything touches JAX's devices.
  """
  if mode not in MODES:
    raise ConfigError(f"--distributed.mode={mode!r} is not one of {', '.join(MODES)}")
  if mode == "off":
    return False
  explicit = (coordinator_address, num_processes > 0, process_id >= 0)
  if any(explicit):
    if not all(explicit):
      raise ConfigError("--distributed.coordinator_address, --distributed.num_processes and "
                        f"--distributed.process_id go together (got {coordinator_address!r}, {num_processes}, "
                        f"{process_id})")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--distributed.process_id={process_id} must be in "
                        f"[0, --distributed.num_processes={num_processes})")
    if num_processes == 1:
      return False
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  elif mode == "on" or slurm_tasks() > 1 or tpu_workers() > 1:
    kwargs = {}  # JAX detects the cluster
  else:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk through gloo
  jax.distributed.initialize(**kwargs, initialization_timeout=initialization_timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  return True
