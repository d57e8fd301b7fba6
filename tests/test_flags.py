"""Flag files compose and run; bad input is rejected with a clear message before compute."""

import dataclasses
import glob
import json
import os

import pytest
from absl import flags

from conftest import FLAGS_DIR, ROOT, run_cli, train_in_process
from experiments import config as config_lib

FLAG_FILES = sorted(glob.glob(os.path.join(FLAGS_DIR, "*.flags")))
# Set-ups that model files include (no model of their own): they run inside those files.
BASES = ("mnist1d_paper.flags", "mnist1d_best.flags", "mnist1d_validation.flags")
# Files that need pretrained weights a user downloads (tests/test_gpt2.py parses them with a
# stand-in folder and checks the one-line error without one).
NEEDS_WEIGHTS = ("shakespeare_gpt2_finetune.flags",)
RUNNABLE = [path for path in FLAG_FILES if os.path.basename(path) not in BASES + NEEDS_WEIGHTS]
# --shuffle_buffer: a streamed, shuffled split fills its buffer before the first batch (50,000
# 2D points: 3 s); the files' shuffling stays on.
TINY = ["--steps=2", "--warmup_steps=1", "--log_every=1", "--eval_every=0", "--checkpoint_every=0",
        "--eval_batch_size=100", "--eval_batches=1", "--final_eval_batches=0", "--sample.tokens=20",
        "--shuffle_buffer=1000"]
# Same models (narrower for the generative ones), smaller batches and samples, where the file's
# own would be slow on 2 CPU cores.
SMALLER = {
    "shakespeare_char.flags": ["--batch_size=4", "--eval_batch_size=4"],
    "shakespeare_char_gpt.flags": ["--batch_size=4", "--eval_batch_size=4", "--gpt.num_layers=1", "--block_size=64"],
    "numbers_to_words_transformer.flags": ["--eval_split=test[:100]", "--encoder_decoder.num_layers=1",
                                           "--encoder_decoder.num_decoder_layers=1"],
    # Diffusion samples through every step at the final evaluation: fewer steps and samples.
    "ddpm_ring.flags": ["--ddpm.diffusion_steps=20", "--sample.count=100", "--ddpm_mlp.hidden=32"],
    "ddpm_grid.flags": ["--ddpm.diffusion_steps=20", "--sample.count=100", "--ddpm_mlp.hidden=32"],
    "ddpm_digits.flags": ["--ddpm.diffusion_steps=20", "--sample.count=4", "--batch_size=8", "--unet.features=8,16",
                          "--unet.blocks=1"],
    "wavenet_tones.flags": ["--block_size=256", "--batch_size=2", "--eval_batch_size=2", "--wavenet.dilations=1,2,4"],
    "gan_ring.flags": ["--sample.count=200"],
    "gan_grid.flags": ["--sample.count=200"],
    "vae_digits.flags": ["--elbo.iwae_samples=10"],
    "vae_mnist1d.flags": ["--elbo.iwae_samples=10"],
    # The published MNIST-1D set: the larger generated ones take seconds to minutes to make.
    "mnist1d_double_descent.flags": ["--dataset=mnist1d"],
    "mnist1d_learning_curve.flags": ["--dataset=mnist1d", "--train_examples=1000", "--eval_every=1"],
    "mnist1d_mlp_cured.flags": ["--eval_every=1"],  # early stopping evaluates
    "mnist1d_cnn_cured.flags": ["--eval_every=1"],
}
# An experiment's set-up read after a model's flag file (a sweep's overlay): run with one.
OVERLAYS = {"mnist1d_learning_curve.flags": "mnist1d_cnn.flags"}


def parse(*args: str) -> config_lib.Config:
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["prog", *args])
  return config_lib.from_flags(values)


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)  # flag files include each other by repository-relative paths


def test_flag_files_compose_and_later_flags_win():
  config = parse(f"--flagfile={FLAGS_DIR}/mnist1d_cnn.flags", "--learning_rate=3e-3", "--cnn.features=8,8,8")
  assert config.model == "cnn" and config.steps == 6000 and not config.shuffle  # from the included file
  assert config.learning_rate == 3e-3 and config.model_hparams["features"] == (8, 8, 8)
  assert config.model_hparams["kernel_size"] == (5, 3, 3)


def test_resolved_flagfile_reproduces_the_config(tmp_path):
  config = parse(f"--flagfile={FLAGS_DIR}/mnist1d_gru.flags", "--seed=7")
  path = tmp_path / "flags.flags"
  path.write_text(config_lib.to_flagfile(config))
  assert parse(f"--flagfile={path}") == config


def test_only_recipes_of_the_same_program_skip_their_two_steps():
  skipped = {os.path.basename(p): _same_program_as(os.path.basename(p)) for p in RUNNABLE}
  assert {k: v for k, v in skipped.items() if v} == {
      "ddpm_ring.flags": "ddpm_grid.flags", "gan_ring.flags": "gan_grid.flags",
      "shakespeare_char_gpt_cpu_best.flags": "shakespeare_char_gpt_cpu.flags",
      "shakespeare_char_gpt_cpu_fast.flags": "shakespeare_char_gpt_cpu.flags"}


def test_base_flag_files_are_included_by_model_files():
  included = {os.path.basename(line.split("=", 1)[1].strip()) for path in RUNNABLE
              for line in open(path, encoding="utf-8") if line.startswith("--flagfile=")}
  assert set(BASES) <= included


# A file whose run differs from an earlier file's only in these (the numbers of a recipe, or
# another configuration of the same generated dataset) runs that file's program: it is parsed
# and compared, not run again.
SAME_PROGRAM = ("learning_rate", "min_learning_rate", "weight_decay", "steps")


def _config(name: str, *extra: str) -> config_lib.Config:
  model = [f"--flagfile={FLAGS_DIR}/{OVERLAYS[name]}"] if name in OVERLAYS else []
  return parse(*model, f"--flagfile={FLAGS_DIR}/{name}", *TINY, *SMALLER.get(name, []), *extra)


def _differences(a: config_lib.Config, b: config_lib.Config) -> set[str]:
  a, b = dataclasses.asdict(a), dataclasses.asdict(b)
  return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def _same_program_as(name: str) -> str | None:
  """An earlier runnable file whose run differs from NAME's only in SAME_PROGRAM fields or in
  the configuration of the same dataset builder (mixture2d/ring, mixture2d/grid)."""
  config = _config(name)
  for other in map(os.path.basename, RUNNABLE[:RUNNABLE.index(os.path.join(FLAGS_DIR, name))]):
    earlier = _config(other)
    diff = _differences(config, earlier)
    if "dataset" in diff and config.dataset.split("/")[0] == earlier.dataset.split("/")[0]:
      diff.discard("dataset")
    if diff <= set(SAME_PROGRAM):
      return other
  return None


@pytest.mark.parametrize("path", RUNNABLE, ids=os.path.basename)
def test_every_flag_file_runs_two_steps(path, tmp_path):
  from experiments import train
  name = os.path.basename(path)
  config = _config(name)
  if _same_program_as(name):
    return  # composed into a valid config (above); its program ran with the earlier file's
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 2
  assert all(v == v for v in summary.values())  # no NaN


@pytest.mark.parametrize("args,message", [
    (["--model=transformerz"], "transformerz"),
    (["--optimizer=adamx"], "adamx"),
    (["--learning_rate=-1"], "learning_rate"),
    (["--schedule=cosinee"], "cosinee"),
    (["--parallel.mode=vmap"], "vmap"),
    (["--steps=0"], "steps"),
    (["--model=mlp", "--cnn.features=4"], "--cnn.features is set but --model=mlp"),
    (["--model=cnn", "--cnn.features=4,x"], "comma-separated list of int"),
    (["--warmup_steps=10", "--steps=5"], "warmup_steps"),
    (["--data_dir=/no/such/dir"], "does not exist"),
    (["--dataset=char_text", "--text_path=/no/such/input.txt"], "--text_path"),
    (["--objective=mlm", "--mlm.mask_rate=0"], "MaskedLM.mask_rate must be in (0, 1)"),
    (["--gan.loss=hinge"], "--gan.loss is set but --objective=classification"),
    (["--objective=gan", "--gan.loss=least_squares"], "Adversarial.loss"),
    (["--learning_rate=inf"], "finite"),
    (["--runtime.device_data_mb=nan"], "finite"),
    (["--sample.top_k=-1"], "--sample.top_k"),
    (["--model=gpt", "--gpt.attention=sparse"], "sparse"),
    (["--model=gpt", "--gpt.attention_kernel=cudnn"], "--dtype=bfloat16"),
])
def test_bad_flags_are_rejected(args, message):
  with pytest.raises((config_lib.ConfigError, flags.IllegalFlagValueError)) as e:
    parse(*args)
  assert message in str(e.value)


def test_unknown_flag_is_rejected():
  with pytest.raises(flags.UnrecognizedFlagError):
    parse("--learning_rat=1")


@pytest.mark.parametrize("args,message", [
    (["--dataset=mnist_one_dee"], "unknown dataset"),
    (["--model=cnn", "--cnn.activation=relux"], "relux"),
    (["--model=rnn", "--rnn.cell=transformer"], "transformer"),
    (["--learning_rate=abc"], "--learning_rate=abc"),
    (["--optimizer=adamx"], "--optimizer=adamx: value should be one of <sgd|momentum"),
    (["--learning_rat=1"], "Unknown command line flag 'learning_rat'"),
    (["--cnn.features=4,x"], "--cnn.features=4,x"),
    (["--log_every=0"], "--log_every=0 must be >= 1"),
    (["stray"], "unexpected arguments: stray"),
])
def test_cli_reports_bad_input_in_one_line(args, message, tmp_path):
  proc = run_cli(*args, f"--workdir={tmp_path}", "--steps=1", check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints" / "1")
  assert not os.path.exists(tmp_path / "flags.flags")  # nothing written for a rejected run


def test_default_run_writes_everything(tmp_path):
  """`python -m experiments.run` (shortened): the files every run writes, and a reproducing flag file."""
  proc = run_cli(f"--workdir={tmp_path}", "--steps=20", "--log_every=10", "--eval_every=10")
  assert "step 20/20" in proc.stdout and "steps/s" in proc.stdout and "eval/accuracy" in proc.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["step"] == 20 and summary["num_params"] == 5210 and 0.1 < summary["eval/accuracy"] <= 1
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "train/loss" in l] == [10, 20]
  assert [l["step"] for l in lines if "eval/accuracy" in l] == [10, 20]
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [e.step for e in events.Scalars("train/loss")] == [10, 20]
  assert events.Scalars("eval/accuracy")[-1].value == pytest.approx(summary["eval/accuracy"])
  assert os.path.isdir(tmp_path / "checkpoints" / "20")
  # The compiled train step is in the persistent compilation cache (the tests' shared one).
  assert glob.glob(os.path.join(os.environ["JAX_COMPILATION_CACHE_DIR"], "jit_train_steps-*"))
  # The resolved flag file reproduces the run exactly, in a new workdir.
  again = tmp_path / "again"
  train_in_process(f"--flagfile={tmp_path}/flags.flags", workdir=again)
  summary2 = json.loads((again / "summary.json").read_text())
  assert summary2["eval/accuracy"] == summary["eval/accuracy"]
  assert summary2["eval/loss"] == summary["eval/loss"]


def test_help_lists_the_training_flags_grouped_and_exits_0():
  """`--help` shows the run's own flags, by group, with the values a flag file gives them, and
  the chosen model's and objective's hyperparameters; `--helpfull` still lists every flag."""
  proc = run_cli("--flagfile=experiments/flags/gan_ring.flags", "--help", check=False)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  headers = ["Data:", "Model:", "Model hyperparameters of --model=gan_mlp", "Objective:",
             "Objective hyperparameters of --objective=gan", "Optimizer:", "Loop:", "Precision:", "--sample.*",
             "--parallel.*", "--runtime.*", "--distributed.*"]
  positions = [out.index(h) for h in headers]
  assert positions == sorted(positions)
  for line in ("  --dataset=mixture2d/ring", "  --gan.r1_weight=0.1", "  --gan_mlp.hidden=128", "  --learning_rate=",
               "  --sample.count=2500", "  --workdir="):
    assert line in out, line
  assert "--cnn." not in out and "--elbo." not in out  # only the chosen model's and objective's
  assert "--verbosity" not in out  # nor the libraries' flags (absl.logging's)
  full = run_cli("--helpfull", check=False)
  assert "--verbosity" in full.stdout and "--cnn.features" in full.stdout


@pytest.mark.parametrize("module", ["experiments.sample", "experiments.bench"])
def test_every_command_has_help(module):
  proc = run_cli("--help", module=module, check=False)
  assert proc.returncode == 0 and "python -m " + module in proc.stdout, proc.stdout + proc.stderr
