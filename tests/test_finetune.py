"""Fine-tuning (--init_from, --reinit, --freeze): parameters only, named heads afresh, frozen subtrees."""

import os

import numpy as np
import pytest

from conftest import run_cli, train_in_process
from experiments import checkpoint
from experiments.config import ConfigError

BASE = ["--model=mlp", "--mlp.features=32", "--batch_size=50", "--eval_every=0", "--log_every=1",
        "--optimizer=adam", "--learning_rate=1e-2"]


def _saved(workdir):
  return checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).restore_raw()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A trained run whose classifier has 12 outputs (the data has 10 classes)."""
  workdir = str(tmp_path_factory.mktemp("source"))
  train_in_process(*BASE, "--mlp.num_outputs=12", "--steps=5", "--seed=3", workdir=workdir)
  return workdir


def test_init_from_loads_parameters_only_and_reinitialises_the_named_head(source, tmp_path):
  saved = _saved(source)
  # learning rate 0: the one step leaves every parameter where the run started
  train_in_process(*BASE, f"--init_from={source}", "--reinit=Dense_1", "--learning_rate=0", "--steps=1",
                   workdir=str(tmp_path / "tuned"))
  tuned = _saved(tmp_path / "tuned")
  train_in_process(*BASE, "--learning_rate=0", "--steps=1", workdir=str(tmp_path / "scratch"))
  scratch = _saved(tmp_path / "scratch")
  for name in ("kernel", "bias"):  # the hidden layer: the source's; the new 10-class head: a fresh one
    np.testing.assert_array_equal(tuned["params"]["Dense_0"][name], saved["params"]["Dense_0"][name])
    np.testing.assert_array_equal(tuned["params"]["Dense_1"][name], scratch["params"]["Dense_1"][name])
  assert tuned["params"]["Dense_1"]["kernel"].shape == (32, 10)
  # its own optimizer and step: one Adam step from zero moments, not the source's six
  assert int(tuned["step"]) == 1 and int(saved["step"]) == 5
  counts = [int(np.asarray(x)) for x in _leaves_named(tuned["opt_state"], "count")]
  assert counts and set(counts) == {1}


def _leaves_named(tree, name):
  if isinstance(tree, dict):
    return [leaf for k, v in tree.items() for leaf in ([v] if k == name and not isinstance(v, dict)
                                                       else _leaves_named(v, name))]
  if isinstance(tree, (list, tuple)):
    return [leaf for v in tree for leaf in _leaves_named(v, name)]
  return []


def test_frozen_subtrees_keep_their_loaded_values(source, tmp_path):
  saved = _saved(source)
  train_in_process(*BASE, f"--init_from={source}:5", "--mlp.num_outputs=12", "--freeze=Dense_0",
                   "--weight_decay=0.1", "--optimizer=adamw", "--steps=3", workdir=str(tmp_path / "frozen"))
  frozen = _saved(tmp_path / "frozen")
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(frozen["params"]["Dense_0"][name], saved["params"]["Dense_0"][name])
  assert np.abs(frozen["params"]["Dense_1"]["kernel"] - saved["params"]["Dense_1"]["kernel"]).max() > 1e-4


def test_a_shape_that_does_not_fit_is_named(source, tmp_path):
  with pytest.raises(ConfigError, match=r"Dense_1/bias \(12,\) saved, \(10,\) here.*--reinit"):
    train_in_process(*BASE, f"--init_from={source}", "--steps=1", workdir=str(tmp_path / "w"))


def test_bad_fine_tuning_input_is_one_line_before_any_compute(source, tmp_path):
  for args, message in [
      ([f"--init_from={source}", "--reinit=head"], f"--reinit=head: the model has no parameters under 'head'; its "
       "top-level names are Dense_0, Dense_1"),
      ([f"--init_from={tmp_path}/missing"], f"--init_from={tmp_path}/missing: {tmp_path}/missing does not exist"),
      ([f"--init_from={source}:7"], f"--init_from={source}:7: no checkpoint of step 7 in {source}/checkpoints "
       "(saved: 5)"),
      ([f"--init_from={tmp_path}"], f"--init_from={tmp_path}: {tmp_path} is neither a run with a checkpoint"),
      (["--reinit=Dense_1"], "--reinit=Dense_1 re-initialises part of a loaded model: it needs --init_from"),
  ]:
    with pytest.raises(ConfigError) as e:
      train_in_process(*BASE, *args, "--steps=1", workdir=str(tmp_path / "run"))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
  proc = run_cli(*BASE, f"--init_from={source}", "--freeze=Dense_2", "--steps=1", f"--workdir={tmp_path / 'run'}",
                 check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --freeze=Dense_2: the model has no parameters under 'Dense_2'; its top-level names are Dense_0, Dense_1"]
