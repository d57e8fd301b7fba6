"""python -m experiments.export: the exported function and the SavedModel compute what the model does,
for any batch; they reload without this project's code; bad input is one line."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import build
from experiments import export as ex
from experiments.config import ConfigError
from experiments.datasets import char_text
from tests.conftest import run_cli, train_in_process

TINY = ["--steps=3", "--warmup_steps=1", "--log_every=3", "--eval_every=0", "--checkpoint_every=0",
        "--final_eval_batches=0", "--seed=0"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
  """A CNN with batch normalisation: its running statistics are part of what is exported."""
  workdir = tmp_path_factory.mktemp("cnn")
  train_in_process("--flagfile=experiments/flags/mnist1d_cnn_best.flags", "--cnn.features=8,8", "--cnn.kernel_size=5,3",
                   "--cnn.strides=1,2", "--batch_size=50", *TINY, workdir=workdir)
  return str(workdir)


class Reference:
  """The model's own evaluation-mode apply on the restored checkpoint."""

  def __init__(self, workdir):
    self.restored = build.restore(workdir)

  def __call__(self, *inputs):
    r = self.restored
    return np.asarray(r.model.apply({"params": r.params, **r.model_state}, *inputs, train=False))


def _saved_model(directory, info):
  """The SavedModel's serving signature, as a function of the inputs (numpy arrays)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures["serving_default"]
  return lambda *inputs: serve(**{i["name"]: tf.constant(x) for i, x in zip(info["inputs"], inputs)})[
      info["output"]["name"]].numpy()


# A program that reloads the export with jax, flax and numpy only, and shows that it imported
# nothing of this project.
FRESH = """
import sys, numpy as np, jax, flax.serialization
out = sys.argv[1]
exported = jax.export.deserialize(bytearray(open(out + "/model.jax_exported", "rb").read()))
variables = flax.serialization.msgpack_restore(open(out + "/params.msgpack", "rb").read())
x = np.load(out + "/x.npy")
np.save(out + "/y.npy", np.asarray(exported.call(variables, x)))
assert not any(m.split(".")[0] in ("nets", "experiments") for m in sys.modules), "imported the project"
"""


def test_a_batch_norm_cnn_exports_with_a_symbolic_batch_and_reloads_anywhere(cnn_run, tmp_path):
  out = tmp_path / "export"
  info = ex.export(cnn_run, str(out))
  assert sorted(os.listdir(out)) == ["export.json", "model.jax_exported", "params.msgpack", "saved_model"]
  assert json.loads((out / "export.json").read_text()) == info
  assert info["inputs"] == [{"name": "x", "shape": ["b", 40], "dtype": "float32"}]
  assert info["output"] == {"name": "logits", "shape": ["b", 10], "dtype": "float32"}
  assert (info["model"], info["dataset"], info["step"], info["platforms"]) == ("cnn", "mnist1d", 3, ["cpu"])
  assert info["variables"] == ["batch_stats", "params"]

  served, reference, saved_model = ex.load(out), Reference(cnn_run), _saved_model(out, info)
  stats = reference.restored.model_state["batch_stats"]
  jax.tree.map(np.testing.assert_array_equal, served.variables["batch_stats"], stats)
  assert all(np.abs(layer["mean"]).max() > 1e-3 for layer in stats.values())  # trained statistics, not zeros
  rng = np.random.default_rng(0)
  for batch in (3, 7):  # one program for every batch size
    x = rng.standard_normal((batch, 40)).astype(np.float32)
    want = reference(x)
    np.testing.assert_allclose(np.asarray(served(x)), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(saved_model(x), want, rtol=0, atol=1e-5)

  # Without this project: a fresh interpreter with jax and flax only.
  x = rng.standard_normal((5, 40)).astype(np.float32)
  np.save(out / "x.npy", x)
  proc = subprocess.run([sys.executable, "-c", FRESH, str(out)], capture_output=True, text=True, timeout=120,
                        cwd=str(tmp_path), env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  np.testing.assert_allclose(np.load(out / "y.npy"), reference(x), rtol=0, atol=1e-5)

  # An existing export is replaced only when asked.
  with pytest.raises(ConfigError, match=re.escape(f"--out={out} is not empty; name a new directory, or pass "
                                                  "--overwrite")):
    ex.export(cnn_run, str(out))
  again = ex.export(cnn_run, str(out), batch_size=2, saved_model="off", overwrite=True)
  assert again["inputs"][0]["shape"] == [2, 40] and sorted(os.listdir(out)) == [
      "export.json", "model.jax_exported", "params.msgpack", "x.npy", "y.npy"]
  fixed = ex.load(out)
  np.testing.assert_allclose(np.asarray(fixed(x[:2])), reference(x[:2]), rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match=re.escape("x: shape (3, 40) does not fit [2, 40]")):
    fixed(x[:3])


@pytest.mark.skipif(not os.path.isfile(char_text.DEFAULT_TEXT_PATH), reason="needs the shared Tiny Shakespeare file")
def test_a_language_model_exports_with_symbolic_batch_and_length(tmp_path):
  workdir = tmp_path / "gpt"
  train_in_process("--flagfile=experiments/flags/shakespeare_char_gpt_cpu.flags", "--gpt.num_layers=1",
                   "--gpt.embed_dim=16", "--gpt.num_heads=2", "--block_size=16", "--batch_size=2",
                   "--eval_batch_size=2", "--eval_batches=1", "--sample.tokens=0", *TINY, workdir=workdir)
  out = tmp_path / "export"
  info = ex.export(str(workdir), str(out))
  assert info["inputs"] == [{"name": "tokens", "shape": ["b", "t"], "dtype": "int32"}]
  assert info["output"] == {"name": "logits", "shape": ["b", "t", 65], "dtype": "float32"}
  assert info["constraints"] == ["t <= 16"] and len(info["vocabulary"]) == 65
  served, reference, saved_model = ex.load(out), Reference(str(workdir)), _saved_model(out, info)
  rng = np.random.default_rng(0)
  for shape in ((3, 16), (7, 5)):  # batch and length both chosen at call time
    tokens = rng.integers(0, 65, shape).astype(np.int32)
    want = reference(tokens)
    np.testing.assert_allclose(np.asarray(served(tokens)), want, rtol=0, atol=1e-5)
    # (the exact GELU's erf: serialised for TensorFlow's older StableHLO, experiments/export.py)
    np.testing.assert_allclose(saved_model(tokens), want, rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match=re.escape("t=17 is beyond the model's bound t <= 16")):  # its positions
    served(np.zeros((1, 17), np.int32))


@pytest.mark.skipif(not os.path.isfile(char_text.DEFAULT_TEXT_PATH), reason="needs the shared Tiny Shakespeare file")
def test_a_program_that_needs_its_token_lengths_exports_them_fixed(tmp_path):
  workdir = tmp_path / "sparse"  # strided sparse attention: block masks made with numpy from the length
  train_in_process("--flagfile=experiments/flags/shakespeare_char_gpt_cpu.flags", "--gpt.num_layers=1",
                   "--gpt.embed_dim=16", "--gpt.num_heads=2", "--gpt.attention=strided", "--gpt.sparse_block=4",
                   "--block_size=16", "--batch_size=2", "--eval_batch_size=2", "--eval_batches=1", "--sample.tokens=0",
                   *TINY, workdir=workdir)
  info = ex.export(str(workdir), str(tmp_path / "export"), saved_model="off")
  assert info["inputs"] == [{"name": "tokens", "shape": ["b", 16], "dtype": "int32"}] and not info["constraints"]
  assert info["note"].startswith("token lengths fixed: the program needs them")
  tokens = np.random.default_rng(0).integers(0, 65, (5, 16)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(ex.load(tmp_path / "export")(tokens)), Reference(str(workdir))(tokens),
                             rtol=0, atol=1e-5)


def test_bad_input_is_one_line_before_any_compute(cnn_run, tmp_path, monkeypatch):
  out = str(tmp_path / "out")
  missing = str(tmp_path / "missing")
  cases = [
      ((missing, out), {}, f"--workdir={missing}: no such directory"),
      ((str(tmp_path), out), {}, f"--workdir={tmp_path}: no run there (no flags.flags)"),
      ((cnn_run, out), {"step": 99}, "--step=99: no checkpoint of that step in "),
      ((cnn_run, out), {"platforms": ["cpu", "gpu"]},
       "--platforms=cpu,gpu: choose one or more of cpu, cuda, rocm, tpu"),
  ]
  for args, kwargs, message in cases:
    with pytest.raises(ConfigError, match=re.escape(message)):
      ex.export(*args, **kwargs)
  empty = tmp_path / "untrained"
  empty.mkdir()
  (empty / "flags.flags").write_text(open(os.path.join(cnn_run, "flags.flags"), encoding="utf-8").read())
  with pytest.raises(ConfigError, match=re.escape(f"--workdir={empty}: no checkpoint in {empty}/checkpoints")):
    ex.export(str(empty), out)
  monkeypatch.setattr(ex, "INFERENCE", ("lm",))  # (every objective of the project has one)
  with pytest.raises(ConfigError, match=re.escape("--objective=classification: no inference function to export; "
                                                  "exportable: lm")):
    ex.export(cnn_run, out)
  assert not os.path.exists(out)  # nothing written


def test_the_command_says_what_is_wrong_in_one_line(cnn_run, tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("mine")
  proc = run_cli(f"--workdir={cnn_run}", f"--out={tmp_path / 'out'}", module="experiments.export", check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (f"error: --out={tmp_path / 'out'} is not empty; name a new "
                                                   "directory, or pass --overwrite to replace an export there")
