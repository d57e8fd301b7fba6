"""Language modelling end to end: the text pipeline, the catalog path, samples and the sampling CLI."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import run_cli
from experiments import data, train
from experiments.config import Config, ConfigError, Sample
from experiments.datasets import char_text

pytestmark = pytest.mark.skipif(not os.path.isfile(char_text.DEFAULT_TEXT_PATH),
                                reason="needs the shared Tiny Shakespeare file")


@pytest.fixture(scope="module")
def shakespeare(tfds_dir):
  config = Config(dataset="char_text", data_dir=tfds_dir, eval_split="validation", block_size=64, batch_size=12,
                  eval_batch_size=10, eval_batches=3, model="gpt", objective="lm")
  return config, data.load(config)


def test_text_source_is_nanogpts(shakespeare):
  config, source = shakespeare
  assert source.tokenizer.size == 65
  assert len(source.text.tokens["train"]) == 1_003_854 and len(source.text.tokens["validation"]) == 111_540
  assert source.example["x"].shape == (1, 64) and source.example["x"].dtype == np.int32
  assert source.tokenizer.decode(source.tokenizer.encode("ROMEO: O, she doth teach")) == "ROMEO: O, she doth teach"


def test_text_batches_are_windows_seeded_by_step(shakespeare):
  config, source = shakespeare
  train_text = source.tokenizer.decode(source.text.tokens["train"])
  first = [next(data.text_batches(config, source.text, start_step=s)) for s in range(3)]
  stream = data.text_batches(config, source.text)
  for want in first:  # a resumed stream starts where an uninterrupted one would be
    got = next(stream)
    np.testing.assert_array_equal(got["x"], want["x"])
  batch = first[0]
  assert batch["x"].shape == batch["y"].shape == (12, 64)
  np.testing.assert_array_equal(batch["x"][:, 1:], batch["y"][:, :-1])  # y is x shifted by one
  for row_x, row_y in zip(batch["x"], batch["y"]):
    window = source.tokenizer.decode(list(row_x) + [row_y[-1]])
    assert window in train_text
  other = next(data.text_batches(config.replace(seed=1), source.text))
  assert not np.array_equal(other["x"], batch["x"])


def test_text_eval_batches_are_fixed(shakespeare):
  config, source = shakespeare
  a = data.text_eval_batches(config, source.text)
  b = data.text_eval_batches(config.replace(seed=5), source.text)
  assert len(a) == 3 and a[0]["x"].shape == (10, 64) and a[0]["mask"].sum() == 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["x"], y["x"])
  validation = source.tokenizer.decode(source.text.tokens["validation"])
  assert source.tokenizer.decode(a[0]["x"][0]) in validation
  final = data.text_eval_batches(config.replace(final_eval_batches=5), source.text, final=True)
  assert len(final) == 5 and len(data.text_eval_batches(config.replace(final_eval_batches=5), source.text)) == 3
  for x, y in zip(a, final):  # the evaluations during training take the first of the final windows
    np.testing.assert_array_equal(x["x"], y["x"])


def test_the_final_evaluation_takes_final_eval_batches(shakespeare, tmp_path):
  config, _ = shakespeare
  config = config.replace(model_hparams={"num_layers": 1, "num_heads": 2, "embed_dim": 16}, steps=4, log_every=2,
                          eval_every=2, checkpoint_every=0, sample=Sample(tokens=0), eval_batches=1,
                          final_eval_batches=3)
  def evals(config, name):
    summary = train.train_and_evaluate(config, str(tmp_path / name))
    lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [m["eval/loss"] for m in lines if "eval/loss" in m], summary["eval/loss"]
  cheap, final = evals(config, "a")
  three, three_final = evals(config.replace(eval_batches=3, final_eval_batches=0), "b")
  assert len(cheap) == len(three) == 2  # at step 2, and the final one at step 4
  assert cheap[0] != pytest.approx(three[0], abs=1e-6)  # step 2: one batch against three
  assert final == cheap[1] and final == pytest.approx(three_final, abs=1e-6)  # step 4: the same three batches


def test_catalog_tiny_shakespeare_trains_with_mock_data(tmp_path):
  config = Config(dataset="tiny_shakespeare", eval_split="validation", model="gpt", objective="lm",
                  model_hparams={"num_layers": 1, "num_heads": 2, "embed_dim": 16}, block_size=8, batch_size=4,
                  eval_batch_size=4, eval_batches=2, steps=2, log_every=1, eval_every=0, checkpoint_every=0,
                  sample=Sample(tokens=10))
  with tfds.testing.mock_data(num_examples=1):
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 2 and np.isfinite(summary["eval/loss"])
  assert os.path.isfile(tmp_path / "samples" / "step_000002.txt")


def test_gpt_run_writes_samples_and_the_cli_samples_from_it(tmp_path):
  proc = run_cli("--flagfile=experiments/flags/shakespeare_char_gpt_cpu.flags", f"--workdir={tmp_path}",
                 "--steps=20", "--warmup_steps=5", "--log_every=10", "--eval_every=10", "--eval_batches=2", "--final_eval_batches=0",
                 "--gpt.num_layers=1", "--sample.tokens=30")
  assert "tok/s" in proc.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["train_tokens_per_sec"] > 0 and summary["eval/loss"] < 4.2  # below uniform, log(65)
  assert abs(summary["eval/bits_per_token"] * np.log(2) - summary["eval/loss"]) < 1e-6
  for step in (10, 20):
    assert len((tmp_path / "samples" / f"step_{step:06d}.txt").read_text(encoding="utf-8")) == 30
  proc = run_cli(f"--workdir={tmp_path}", "--prompt=ROMEO:", "--num_tokens=50", "--seed=1",
                 module="experiments.sample")
  text = proc.stdout[:-1]  # the trailing newline
  assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50
  # In process (no second interpreter start-up): seeded, and a clear error for unknown characters.
  from experiments import sample
  assert sample.generate(str(tmp_path), "ROMEO:", 50, 0.8, 40, seed=1) == text
  with pytest.raises(ConfigError, match="--prompt"):
    sample.generate(str(tmp_path), "ROMEO: \u00e9", 5, 0.8, 40, seed=1)
  # beam search: every hypothesis runs the tokens asked for, or ends at the first --eos
  assert len(sample.generate(str(tmp_path), "ROMEO:", 12, 0.0, 0, seed=0, beam_size=2)) == len("ROMEO:") + 12
  ended = sample.generate(str(tmp_path), "ROMEO:", 12, 0.0, 0, seed=0, beam_size=2, eos="\n")[len("ROMEO:"):]
  assert 1 <= len(ended) <= 12 and "\n" not in ended[:-1] and (ended.endswith("\n") or len(ended) == 12)
  spread = run_cli(f"--workdir={tmp_path}", "--windows=8", "--draws=3", module="experiments.bench.eval_spread")
  assert "24 windows of 64: mean loss" in spread.stdout and "8-window estimates: std" in spread.stdout
