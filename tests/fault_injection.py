"""Kill a training run with SIGKILL at random steps, resume it each time, and check that it
ends bit-identical to a run never interrupted: the same parameters and optimizer state, and
the same logged metrics, each step once, in metrics.jsonl and as TensorBoard shows them.

    python tests/fault_injection.py --kills=20 --seed=0

The run shuffles its data, uses dropout and a decaying schedule, and checkpoints every 20
steps, so a resume must restore the step, the data position, the random keys and the
optimizer's state. Each kill lands 0-0.3 s (random) after the progress line (every 10
steps) of a random step 1-50 steps past the last checkpoint: the kills spread over the run,
and some land while a checkpoint is being written. Prints one JSON line; exits 1 if any
number differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from tensorboard.backend.event_processing import event_accumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import checkpoint  # pylint: disable=wrong-import-position

STEPS = 1000
RUN = ["--model=mlp", "--mlp.features=64,64", "--mlp.dropout=0.1", f"--steps={STEPS}", "--batch_size=50",
       "--schedule=warmup_cosine", "--warmup_steps=50", "--optimizer=adamw", "--weight_decay=1e-4",
       "--log_every=10", "--eval_every=100", "--checkpoint_every=20", "--seed=5"]


def _start(workdir: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "experiments.run", *RUN, f"--workdir={workdir}"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_to_end(workdir: str) -> None:
  proc = _start(workdir)
  out, _ = proc.communicate()
  if proc.returncode != 0:
    raise SystemExit(f"the run failed (exit {proc.returncode}):\n{out[-3000:]}")


def _kill_at(workdir: str, step: int, delay: float) -> int | None:
  """Starts (resumes) the run and kills it `delay` seconds after its progress line of `step`
  (or a later one) appears; returns the step of that line, or None if the run ended first."""
  proc = _start(workdir)
  for line in proc.stdout:
    m = re.match(r"^step +(\d+)/", line)
    if m and int(m.group(1)) >= step:
      time.sleep(delay)
      proc.kill()
      proc.wait()
      return int(m.group(1))
  proc.wait()
  return None


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in row.items() if k != "train/steps_per_sec"} for row in rows]


def _tensorboard(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """Each scalar's (step, value) as TensorBoard's viewer loads the run's event files (it
  warns of each restart marker it purges from: quiet here)."""
  logging.getLogger("tensorboard").setLevel(logging.ERROR)
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"scalars": 0})
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
          if tag != "train/steps_per_sec"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="fault-injection-") as tmp:
    reference, killed = os.path.join(tmp, "reference"), os.path.join(tmp, "killed")
    _run_to_end(reference)
    kills, resumed_from = [], []
    while len(kills) < args.kills:
      last = checkpoint.Checkpoints(os.path.join(killed, "checkpoints")).latest_step() or 0
      resumed_from.append(last)
      at = _kill_at(killed, min(last + rng.randint(1, 50), STEPS), rng.uniform(0.0, 0.3))
      if at is None:
        break
      kills.append(at)
    _run_to_end(killed)

    a = _leaves(checkpoint.Checkpoints(os.path.join(reference, "checkpoints")).restore_raw())
    b = _leaves(checkpoint.Checkpoints(os.path.join(killed, "checkpoints")).restore_raw())
    differing = sorted(k for k in a if k not in b or a[k].shape != b[k].shape or not np.array_equal(a[k], b[k]))
    ref_rows, rows = _metrics(reference), _metrics(killed)
    result = {
        "kills": len(kills), "killed_after_steps": kills, "resumed_from_steps": resumed_from,
        "state_arrays": len(a), "state_arrays_differing": differing,
        "metrics_rows": len(rows), "metrics_identical": rows == ref_rows,
        "steps_logged_once": len({(r["step"], tuple(sorted(r))) for r in rows}) == len(rows),
        "tensorboard_identical": _tensorboard(killed) == _tensorboard(reference),
        "wall_s": round(time.perf_counter() - start, 1),
    }
  print(json.dumps(result))
  sys.exit(0 if not differing and all(result[k] for k in ("metrics_identical", "steps_logged_once",
                                                           "tensorboard_identical")) else 1)


if __name__ == "__main__":
  main()
