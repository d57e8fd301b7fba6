"""A validation split carved from the training data, the test split read once at the end,
--train_examples, label noise, the best checkpoint and early stopping, and the compute a
run reports."""

import json

import numpy as np
import pytest

from conftest import train_in_process
from experiments import config as config_lib, data, logs
from experiments.config import ConfigError

RUN = ["--model=mlp", "--mlp.features=32", "--batch_size=50", "--log_every=10", "--checkpoint_every=0", "--seed=1"]


def _config(*args):
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["run", *args])
  return config_lib.from_flags(values)


def _rows(batch):
  return {row.tobytes() for row in np.asarray(batch["x"])}


def test_the_validation_split_is_the_last_examples_disjoint_from_training(tfds_dir):
  config = _config("--model=mlp", "--validation_fraction=0.1", f"--data_dir={tfds_dir}")
  assert (config.fit_split, config.validation_split) == ("train[:90%]", "train[90%:]")  # no process, no seed in it
  b = data.builder(config)
  whole, fit, val = (data.read_split(b, s) for s in ("train", config.fit_split, config.validation_split))
  assert len(fit["x"]) == 3600 and len(val["x"]) == 400
  assert not _rows(fit) & _rows(val)
  np.testing.assert_array_equal(np.concatenate([fit["x"], val["x"]]), whole["x"])

  bounded = _config("--model=mlp", "--validation_fraction=0.1", "--train_examples=250", f"--data_dir={tfds_dir}")
  few = data.read_split(b, bounded.fit_split)
  np.testing.assert_array_equal(few["x"], whole["x"][:250])
  assert bounded.validation_split == config.validation_split


@pytest.mark.parametrize("args, message", [
    (["--validation_fraction=1.0"], r"^--validation_fraction=1.0 must be a whole percentage in \(0, 1\), e.g. 0.1$"),
    (["--validation_fraction=0.105"], r"^--validation_fraction=0.105 must be a whole percentage"),
    (["--validation_fraction=0.1", "--train_split=train[:50%]"], r"^--train_split=train\[:50%\] is already a slice"),
    (["--validation_fraction=0.2", "--train_examples=3300"],
     r"^--train_examples=3300 exceeds the 3200 examples of --train_split=train less the validation split$"),
    (["--train_examples=4001"], r"^--train_examples=4001 exceeds the 4000 examples of --train_split=train$"),
    (["--dataset=char_text", "--eval_split=validation", "--model=gpt", "--objective=lm", "--validation_fraction=0.1"],
     r"^--validation_fraction and --train_examples slice datasets of examples; char_text is a text"),
])
def test_bad_validation_flags_are_one_line_before_any_compute(args, message, tmp_path, monkeypatch):
  def no_text(*args, **kwargs):
    raise AssertionError("the text was read")
  monkeypatch.setattr(data.Text, "read", no_text)
  with pytest.raises(ConfigError, match=message):
    train_in_process(*(["--model=mlp"] if "--model=gpt" not in args else []), *args, workdir=tmp_path)


def test_evaluations_use_validation_and_the_test_split_is_read_once_at_the_end(tmp_path, monkeypatch):
  events = []
  iterate = data.EvalBatches.__iter__

  def recorded(self):
    events.append(("read", self.split))
    yield from iterate(self)
  write = logs.Logger.write

  def logged(self, step, metrics):
    events.append(("log", step, tuple(sorted({k.split("/")[0] for k in metrics}))))
    write(self, step, metrics)
  monkeypatch.setattr(data.EvalBatches, "__iter__", recorded)
  monkeypatch.setattr(logs.Logger, "write", logged)
  summary = train_in_process(*RUN, "--steps=30", "--eval_every=10", "--validation_fraction=0.1", workdir=tmp_path)

  reads = [e for e in events if e[0] == "read"]
  assert reads.count(("read", "test")) == 1 and ("read", "train[90%:]") in reads
  last_training_row = max(i for i, e in enumerate(events) if e[0] == "log" and "train" in e[2])
  assert events.index(("read", "test")) > last_training_row  # after the last step
  assert [e[1] for e in events if e[0] == "log" and e[2] == ("val",)] == [10, 20]
  assert {k.split("/")[0] for k in summary if "/" in k} == {"val", "eval"}
  assert summary["val/accuracy"] != summary["eval/accuracy"]

  # The compute the run reports. The MLP 40 -> 32 -> 10 on batches of 50: 2 x 50 x (40 x 32 +
  # 32 x 10) forward; backward, the two weight gradients and the hidden layer's input gradient
  # (the data's is not computed).
  forward = 2 * 50 * (40 * 32 + 32 * 10)
  backward = 2 * 50 * (40 * 32 + 32 * 10 + 32 * 10)
  assert summary["matmul_flops_per_step"] == forward + backward
  assert summary["train_flops"] == 30 * (forward + backward)
  assert summary["num_params"] == 40 * 32 + 32 + 32 * 10 + 10




# Early stopping on a scripted validation loss (evaluations every 10 steps): the best is at
# step 30, then three evaluations without a better one: the run stops at step 60.
SCRIPT = {10: 5.0, 20: 4.0, 30: 3.0, 40: 3.5, 50: 3.0, 60: 3.1, 70: 1.0, 80: 0.5}
EARLY = [*RUN, "--validation_fraction=0.1", "--eval_every=10", "--early_stopping_patience=3"]


def _scripted(monkeypatch, seen):
  from experiments import train  # pylint: disable=import-outside-toplevel
  evaluate = train.evaluate

  def scripted(p_eval, state, batches, rng, prefix):
    metrics = evaluate(p_eval, state, batches, rng, prefix)
    step = int(state.step)
    seen.append((prefix, step, np.asarray(jax_leaves(state.params)[0]).copy()))
    return {**metrics, "val/loss": SCRIPT[step]} if prefix == "val" else metrics
  monkeypatch.setattr(train, "evaluate", scripted)


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.leaves(tree)


def test_early_stopping_stops_at_the_right_evaluation_after_a_resume_and_evaluates_the_best_checkpoint(
    tmp_path, monkeypatch):
  seen = []
  _scripted(monkeypatch, seen)
  first = train_in_process(*EARLY, "--steps=40", workdir=tmp_path)  # ends with one evaluation since the best
  assert (first["step"], first["best_step"], first["stop_reason"]) == (40, 30, "steps")
  # Resumed at 40, it counts the evaluation since the best (at 30) again: it stops at 60, as
  # an uninterrupted run does.
  summary = train_in_process(*EARLY, "--steps=80", workdir=tmp_path)
  assert (summary["step"], summary["best_step"], summary["stop_reason"]) == (60, 30, "early_stopping")
  assert summary["val/loss"] == 3.0 and summary["best_value"] == 3.0
  assert [s for p, s, _ in seen if p == "val"] == [10, 20, 30, 40, 50, 60]
  tests = [x for x in seen if x[0] == "eval"]
  assert [s for _, s, _ in tests] == [30, 30]  # the test split, once per run, on the best checkpoint
  best_params = next(w for p, s, w in seen if p == "val" and s == 30)
  np.testing.assert_array_equal(tests[-1][2], best_params)  # restored
  assert sorted(p.name for p in (tmp_path / "checkpoints.best").iterdir()) == ["30"]


@pytest.mark.parametrize("args, message", [
    (["--early_stopping_patience=3"], r"^--early_stopping_patience needs a validation split \(--validation_fraction\)"),
    (["--best_metric=accuracy"], r"^--best_metric needs a validation split"),
    (["--early_stopping_patience=3", "--validation_fraction=0.1", "--eval_every=0"],
     r"^--early_stopping_patience and --best_metric need evaluations during training \(--eval_every\)$"),
    (["--ema_decay=1.0"], r"^--ema_decay=1.0 must be below 1 \(0: off\)$"),
    (["--best_metric=val/accuracy", "--validation_fraction=0.1"],
     r"^--best_metric=val/accuracy: name the metric without its split \(e.g. --best_metric=accuracy"),
])
def test_early_stopping_without_validation_and_bad_averages_are_one_line(args, message):
  with pytest.raises(ConfigError, match=message):
    _config("--model=mlp", *args)


def test_a_nan_is_never_the_best_value(tmp_path):
  from experiments import checkpoint  # pylint: disable=import-outside-toplevel
  best = checkpoint.Best(tmp_path / "best", "val/loss", "min")
  assert not best.better(float("nan")) and not best.better(float("inf")) and best.better(3.0)
  best.close()


def test_label_noise_replaces_the_stated_fraction_the_same_in_every_feed(tfds_dir):
  clean = _config("--model=mlp", "--validation_fraction=0.1", "--shuffle=false", "--batch_size=100",
                  f"--data_dir={tfds_dir}")
  noisy = clean.replace(label_noise=0.15)
  b = data.builder(noisy)
  y, y_noisy = data.read_training(clean, b)["y"], data.read_training(noisy, b)["y"]
  replaced, _ = data.label_noise(noisy, b, len(y))
  assert replaced.sum() == round(0.15 * 3600)  # exactly the fraction, of the training examples only
  assert np.all(y_noisy[~replaced] == y[~replaced])
  changed = np.mean(y_noisy != y)
  assert 0.15 * 0.8 < changed < 0.15 * 1.0  # a random class is the true one a tenth of the time
  assert np.array_equal(data.read_training(noisy, b)["y"], y_noisy)  # fixed for the run
  assert not np.array_equal(data.read_training(noisy.replace(seed=1), b)["y"], y_noisy)  # chosen by the seed
  streamed = data.train_batches(noisy, b)  # the host-streamed feed: in order, the same labels
  np.testing.assert_array_equal(np.concatenate([next(streamed)["y"] for _ in range(36)]), y_noisy)
  evaluated = data.EvalBatches(noisy, b, noisy.fit_split)  # --eval_train: the labels trained on
  labels = np.concatenate([batch["y"][batch["mask"] > 0] for batch in evaluated])
  np.testing.assert_array_equal(labels, y_noisy)


def test_eval_train_reports_the_training_examples_after_the_test(tmp_path, monkeypatch):
  reads = []
  iterate = data.EvalBatches.__iter__

  def recorded(self):
    reads.append(self.split)
    yield from iterate(self)
  monkeypatch.setattr(data.EvalBatches, "__iter__", recorded)
  summary = train_in_process(*RUN, "--steps=20", "--eval_every=0", "--validation_fraction=0.1", "--label_noise=0.5",
                             "--eval_train", workdir=tmp_path)
  assert reads == ["train[90%:]", "test", "train[:90%]"]
  assert {k.split("/")[0] for k in summary if "/" in k} == {"val", "eval", "fit"}
  assert 0 <= summary["fit/accuracy"] <= 1 and summary["fit/accuracy"] != summary["eval/accuracy"]


@pytest.mark.parametrize("args, message", [
    (["--label_noise=1.5"], r"^--label_noise=1.5 must be at most 1 \(0: none; 1: every label random\)$"),
    (["--dataset=char_text", "--eval_split=validation", "--model=gpt", "--objective=lm", "--label_noise=0.1"],
     r"^--label_noise needs class labels; --dataset=char_text has none$"),
])
def test_bad_label_noise_is_one_line(args, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    train_in_process(*(["--model=mlp"] if "--model=gpt" not in args else []), *args, workdir=tmp_path)


def test_curves_draw_train_validation_and_the_test_point(tmp_path):
  from experiments import curves  # pylint: disable=import-outside-toplevel
  run = tmp_path / "run"
  run.mkdir()
  rows = [{"step": 10, "val/accuracy": 0.5}, {"step": 20, "train/accuracy": 0.9, "train/loss": 0.1},
          {"step": 20, "val/accuracy": 0.6, "eval/accuracy": 0.55}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert curves.read(str(run), "accuracy") == {"val": ([10, 20], [0.5, 0.6]), "train": ([20], [0.9]),
                                               "eval": ([20], [0.55])}
  curves.plot([str(run), str(run)], "accuracy", str(tmp_path / "c.png"))
  assert (tmp_path / "c.png").stat().st_size > 1000
  with pytest.raises(ConfigError, match="has no train/f1, val/f1, eval/f1 or fit/f1"):
    curves.read(str(run), "f1")
