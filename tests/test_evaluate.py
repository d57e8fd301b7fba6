"""Evaluation only (experiments.evaluate): any split of a checkpoint, the run's checkpoints untouched."""

import hashlib
import json
import os

import pytest

from conftest import run_cli, train_in_process
from experiments import evaluate
from experiments.config import ConfigError

RUN = ["--model=mlp", "--mlp.features=16", "--batch_size=50", "--steps=6", "--checkpoint_every=3",
       "--eval_every=0", "--log_every=3", "--validation_fraction=0.1", "--eval_batch_size=500"]


def _fingerprint(folder):
  """Every file under `folder` with its size, modification time and content hash."""
  found = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, folder)] = (os.path.getsize(path), os.path.getmtime(path),
                                                 hashlib.sha256(f.read()).hexdigest())
  return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = train_in_process(*RUN, workdir=workdir)
  return workdir, summary


def test_evaluates_any_split_and_leaves_the_checkpoints_untouched(run):
  workdir, summary = run
  before = _fingerprint(os.path.join(workdir, "checkpoints"))
  test = evaluate.evaluate(workdir)
  assert test["step"] == 6 and test["split"] == "test"
  assert test["eval/accuracy"] == pytest.approx(summary["eval/accuracy"], abs=1e-6)
  assert test["eval/loss"] == pytest.approx(summary["eval/loss"], rel=1e-5)
  val = evaluate.evaluate(workdir, "validation")
  assert val["split"] == "train[90%:]" and val["val/accuracy"] == pytest.approx(summary["val/accuracy"], abs=1e-6)
  earlier = evaluate.evaluate(workdir, "train", step=3)
  assert earlier["step"] == 3 and earlier["split"] == "train[:90%]" and "fit/accuracy" in earlier
  assert earlier["fit/loss"] != pytest.approx(evaluate.evaluate(workdir, "train")["fit/loss"])
  assert _fingerprint(os.path.join(workdir, "checkpoints")) == before


def test_the_command_prints_and_appends_the_metrics(run, tmp_path):
  workdir, summary = run
  proc = run_cli(f"--workdir={workdir}", "--split=test[:50%]", f"--out={tmp_path}/m.json",
                 module="experiments.evaluate")
  assert proc.stdout.startswith("step 6, test[:50%]: eval/accuracy ")
  written = json.loads((tmp_path / "m.json").read_text())
  with open(os.path.join(workdir, "evaluations.jsonl")) as f:
    assert json.loads(f.read().splitlines()[-1]) == written
  assert written["split"] == "test[:50%]" and 0 <= written["eval/accuracy"] <= 1


def test_bad_evaluation_input_is_one_line(run, tmp_path):
  workdir, _ = run
  with pytest.raises(ConfigError, match=r"^--step=4: no checkpoint of that step in .*checkpoints \(saved: 3, 6\)$"):
    evaluate.evaluate(workdir, step=4)
  os.makedirs(tmp_path / "empty")
  with open(os.path.join(workdir, "flags.flags")) as f:
    (tmp_path / "empty" / "flags.flags").write_text(f.read())
  proc = run_cli(f"--workdir={tmp_path / 'empty'}", module="experiments.evaluate", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f"error: no checkpoint in {tmp_path / 'empty' / 'checkpoints'}"]
