"""A killed run resumes to the same parameters and logs each step once; SIGTERM checkpoints."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, train_in_process
from experiments import checkpoint

# Shuffled data and a decaying schedule: resuming must restore the data position and the step.
RUN = ["--model=mlp", "--mlp.features=64,64", "--mlp.dropout=0.1", "--steps=300", "--batch_size=50",
       "--schedule=warmup_cosine", "--warmup_steps=50", "--optimizer=adamw", "--weight_decay=1e-4",
       "--log_every=10", "--eval_every=0", "--checkpoint_every=20", "--seed=5"]


def _params(workdir):
  state = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).restore_raw()
  return state["step"], [np.asarray(x) for x in sorted_leaves(state["params"])]


def sorted_leaves(tree, prefix=""):
  if isinstance(tree, dict):
    return [leaf for k in sorted(tree) for leaf in sorted_leaves(tree[k], f"{prefix}/{k}")]
  return [tree]


def _start(workdir):
  return subprocess.Popen([sys.executable, "-m", "experiments.run", *RUN, f"--workdir={workdir}"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt(workdir, sig, after_step):
  """Starts the run and sends `sig` once the progress line of `after_step` appears."""
  proc = _start(workdir)
  pattern = re.compile(rf"^step +{after_step}/")
  sent = False
  for line in proc.stdout:
    if pattern.match(line):
      proc.send_signal(sig)
      sent = True
      break
  out, err = proc.communicate(timeout=120)
  assert sent, f"the run ended before step {after_step}:\n{out}\n{err[-2000:]}"
  return proc.returncode, out, err


def test_killed_and_terminated_runs_resume_to_the_same_parameters(tmp_path, capsys):
  reference = tmp_path / "uninterrupted"
  train_in_process(*RUN, workdir=reference)
  ref_step, ref_params = _params(reference)
  assert ref_step == 300
  # Periodic saves every 20 steps, the last 3 kept (--keep_checkpoints default).
  assert checkpoint.Checkpoints(str(reference / "checkpoints")).manager.all_steps() == [260, 280, 300]

  # SIGTERM: saves a checkpoint where it is and exits cleanly, mid-way.
  terminated = tmp_path / "sigterm"
  code, out, _ = _interrupt(terminated, signal.SIGTERM, 10)
  assert code == 0, out
  assert "SIGTERM: saved the checkpoint at step" in out
  stopped_at = checkpoint.Checkpoints(str(terminated / "checkpoints")).latest_step()
  assert 10 <= stopped_at < 300 and not (terminated / "summary.json").exists()

  # SIGKILL: nothing to catch; the run resumes from its last periodic checkpoint. Saves are
  # written in the background, each once the one before is complete: once step 60's has
  # started (before step 70's line), step 40's is on disk.
  killed = tmp_path / "sigkill"
  code, out, _ = _interrupt(killed, signal.SIGKILL, 70)
  assert code == -signal.SIGKILL
  assert 40 <= checkpoint.Checkpoints(str(killed / "checkpoints")).latest_step() < 300

  killed_log = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
  assert max(killed_log) > checkpoint.Checkpoints(str(killed / "checkpoints")).latest_step()  # logged past it
  for workdir in (terminated, killed):
    capsys.readouterr()
    train_in_process(*RUN, workdir=workdir)
    assert "Resumed from the checkpoint at step" in capsys.readouterr().out
    step, params = _params(workdir)
    assert step == 300
    for a, b in zip(ref_params, params):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

  # The killed run logged steps past its last checkpoint, which the resumed run logs again:
  # each step appears once in metrics.jsonl, and once in TensorBoard's view of the run.
  rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps == list(range(10, 301, 10)), train_steps
  accumulator = event_accumulator.EventAccumulator(str(killed / "tensorboard"))
  accumulator.Reload()
  assert len(list((killed / "tensorboard").iterdir())) == 2  # the killed run's file and the resumed run's
  assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(10, 301, 10))
