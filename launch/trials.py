"""One trial of a search: its flags trained in this process or in a subprocess, each evaluation
reported as it happens (a pruner may stop the trial there).

In this process (`InProcess`) a trial is `experiments.train.train_and_evaluate` called with
the trial's config: JAX, TensorFlow and the dataset's builder are loaded once for the whole
search, and compiled programs an earlier trial made are reused (JAX's caches). In a subprocess
(`Subprocess`) a trial is `python -m experiments.run --flagfile=TRIAL/trial.flags`, its
evaluations read from TRIAL/metrics.jsonl as they are written; a pruned trial is stopped with
SIGTERM (it saves a checkpoint and exits). Either way the trial's folder holds a complete run:
flags.flags, checkpoints, metrics.jsonl, TensorBoard events and, when it finished, summary.json.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from launch.spec import REPO

# report(step, metrics) -> whether to stop the trial there (pruned)
Report = Callable[[int, dict[str, float]], bool]


class Pruned(Exception):
  """The trial was stopped by the pruner after an evaluation."""


class Interrupted(Exception):
  """The trial was stopped by SIGTERM or SIGINT (it saved a checkpoint): the search stops."""


class Diverged(Exception):
  """The trial's loss became NaN or infinite."""


def count_params(config: Any) -> int:
  """The parameters of `config`'s model on its data, from shapes only (nothing is initialised).
  Raises ConfigError when the model does not fit the data (e.g. too many strides)."""
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import build as build_lib, config as config_lib, data  # pylint: disable=g-import-not-at-top
  source = data.load(config)
  built = build_lib.build(config, source)
  init = functools.partial(build_lib.init_state, built.model, built.tx, source.example, jax.random.key(0))
  try:
    state = jax.eval_shape(init)
  except ValueError as e:
    raise config_lib.ConfigError(f"--model={config.model}: {e}") from None
  return build_lib.count_params(state.params)


class InProcess:
  """Trains trials in this process."""

  name = "in_process"

  def __call__(self, lines: Sequence[str], config: Any, workdir: str, report: Report) -> dict[str, Any]:
    from experiments import checkpoint, train  # pylint: disable=g-import-not-at-top
    del lines
    try:
      summary = train.train_and_evaluate(config, workdir, on_evaluation=report)
    except (train.NonFiniteLoss, checkpoint.CheckpointError) as e:
      raise Diverged(str(e)) from None
    if summary.get("stopped") == "on_evaluation":
      raise Pruned()
    if "stopped" in summary:
      raise Interrupted(summary["stopped"])
    return summary


def _libc():
  try:
    return ctypes.CDLL("libc.so.6", use_errno=True)
  except OSError:  # not glibc Linux
    return None


def _die_with_parent(libc) -> None:
  """(Linux) a killed search leaves no trial running on its own: PR_SET_PDEATHSIG. Runs in the
  forked child before exec, so libc is loaded in the parent (no dlopen after fork)."""
  if libc is not None:
    libc.prctl(1, signal.SIGKILL)


class Subprocess:
  """Trains each trial in its own `python -m experiments.run` process."""

  name = "subprocess"

  def __init__(self, python: str = sys.executable, poll_s: float = 0.1):
    self.python, self.poll_s = python, poll_s

  def __call__(self, lines: Sequence[str], config: Any, workdir: str, report: Report) -> dict[str, Any]:
    del config
    path = os.path.join(workdir, "trial.flags")
    command = [self.python, "-m", "experiments.run", f"--flagfile={path}", f"--workdir={workdir}"]
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    seen = _count_lines(metrics_path)  # a resumed trial's earlier evaluations were reported before
    with open(os.path.join(workdir, "run.log"), "a", encoding="utf-8") as log:
      libc = _libc()
      proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=subprocess-popen-preexec-fn
                              preexec_fn=functools.partial(_die_with_parent, libc))
      pruned = False
      try:
        while True:
          finished = proc.poll() is not None
          rows, seen = _new_rows(metrics_path, seen)
          for row in rows:
            step = row.pop("step")
            if any(k.startswith(("val/", "eval/")) for k in row) and not pruned and report(step, row):
              pruned = True
              proc.send_signal(signal.SIGTERM)  # it saves and exits
          if finished:
            break
          time.sleep(self.poll_s)
      except BaseException:
        proc.kill()
        raise
    if pruned:
      raise Pruned()
    summary_path = os.path.join(workdir, "summary.json")
    if proc.returncode == 0 and os.path.exists(summary_path):
      with open(summary_path, encoding="utf-8") as f:
        return json.load(f)
    tail = _tail(os.path.join(workdir, "run.log"))
    if "NaN or infinite" in tail or "loss is nan" in tail.lower() or "loss is inf" in tail.lower():
      raise Diverged(tail)
    if proc.returncode in (0, 130, -signal.SIGINT, -signal.SIGTERM):
      raise Interrupted(f"exit {proc.returncode}")
    raise RuntimeError(f"the trial's run failed (exit {proc.returncode}): {tail}")


def _count_lines(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.endswith("\n"))


def _new_rows(path: str, seen: int) -> tuple[list[dict], int]:
  """The complete lines of metrics.jsonl after the first `seen`, and the new count."""
  if not os.path.exists(path):
    return [], seen
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.endswith("\n")]
  return [json.loads(line) for line in lines[seen:]], len(lines)


def _tail(path: str) -> str:
  """The last error line of a log (or its last line)."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ""
  errors = [line for line in lines if line.startswith("error:") or "Error" in line]
  return (errors or lines or [""])[-1][:300]
