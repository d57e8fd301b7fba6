"""python -m experiments.explain on trained runs: the files it writes, and one line for what does not apply."""

import json
import re

import numpy as np
import pytest

from experiments import explain
from experiments.config import ConfigError
from tests.conftest import run_cli, train_in_process

TINY = ["--batch_size=50", "--steps=30", "--log_every=30", "--eval_every=0", "--checkpoint_every=0", "--seed=0"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cnn")
  train_in_process("--model=cnn", "--cnn.features=8,8", "--cnn.kernel_size=5,3", "--cnn.strides=2,2",
                   "--learning_rate=1e-2", *TINY, workdir=workdir)
  return str(workdir)


def test_explain_a_signal_classifier_writes_attributions_pictures_and_trust_checks(cnn_run, tmp_path):
  opts = explain.defaults(examples=6, steps=16, samples=4, completeness=["4", "16"], faithfulness=True,
                          sanity="model", plot_examples=2)
  methods = ["gradient", "integrated_gradients", "smoothgrad", "occlusion", "grad_cam"]
  summary = explain.explain(cnn_run, methods, opts, str(tmp_path))
  arrays = np.load(tmp_path / "attributions.npz")
  for m in methods:
    assert arrays[m].shape == (6, 40), m
    assert summary["methods"][m]["examples_per_s"] > 0
    assert (tmp_path / f"{m}.png").exists()
  assert arrays["integrated_gradients/gap"].shape == (6,)
  complete = summary["methods"]["integrated_gradients"]
  assert set(complete["completeness_by_steps"]) == {"4", "16"}
  assert complete["completeness_by_steps"]["16"]["median_relative_gap"] == complete["completeness"]["median_relative_gap"]
  assert list(arrays["prediction"]) == list(arrays["target"])  # --target=predicted
  for name in ("methods.png", "deletion.png", "insertion.png", "faithfulness.md", "sanity_model.png", "sanity_model.md"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert set(summary["faithfulness"]) == set(methods) | {"random"}
  assert summary["faithfulness"]["smoothgrad"]["order"] == "magnitude"
  assert summary["sanity_model"]["layers"] == ["Dense_0", "Conv_1", "Conv_0"]  # top down
  # fully randomised, the gradient no longer ranks positions as the trained model did
  assert summary["sanity_model"]["spearman_abs"]["gradient"][-1] < 0.9
  assert json.loads((tmp_path / "summary.json").read_text())["examples"] == 6


def test_explain_refuses_what_does_not_apply_in_one_line(cnn_run, tmp_path):
  opts = explain.defaults(examples=2)
  cases = [
      (["attention"], {}, "--method=attention: CNN has no attention layers"),
      (["grad_cam"], {"layer": "Conv_9"}, "--layer=Conv_9: no such layer; the model's layers: Conv_0, Conv_1"),
      (["grad_cam"], {"layer": "Dense_0"}, "--layer=Dense_0: Grad-CAM needs a layer with spatial axes; those with "
                                           "them: Conv_0, Conv_1"),
      (["saliency"], {}, "--method=saliency: unknown; choose from gradient, gradient_x_input"),
      (["integrated_gradients"], {"rule": "simpson"}, "--rule=simpson with 64 steps (--steps, --completeness): "
                                                      "integration method must be one of"),
      (["integrated_gradients"], {"rule": "riemann_trapezoid", "completeness": ["1"]},
       "--rule=riemann_trapezoid with 1 steps (--steps, --completeness): riemann_trapezoid needs steps >= 2"),
      (["occlusion"], {"window": ["50"]}, "--window=50 is larger than the input [40]"),
      (["integrated_gradients"], {"sanity": "labels"}, "--sanity=labels needs --sanity_workdir"),
      (["occlusion"], {"window": ["3", "3"]}, "--window needs 1 positive integer"),
  ]
  for methods, extra, message in cases:
    with pytest.raises(ConfigError, match=re.escape(message)):
      explain.explain(cnn_run, methods, {**opts, **extra}, str(tmp_path))
  with pytest.raises(ConfigError, match=f"--workdir={tmp_path}: no run there"):
    explain.explain(str(tmp_path), ["gradient"], opts)
  (tmp_path / "flags.flags").write_text((__import__("pathlib").Path(cnn_run) / "flags.flags").read_text())
  with pytest.raises(ConfigError, match="no checkpoint in"):
    explain.explain(str(tmp_path), ["gradient"], opts)


def test_the_command_says_what_does_not_apply_in_one_line(cnn_run):
  proc = run_cli(f"--workdir={cnn_run}", "--method=attention", "--examples=2", module="experiments.explain",
                 check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == "error: --method=attention: CNN has no attention layers (it sows no " \
      "attention weights)"


def test_explain_an_image_model(tmp_path):
  train_in_process("--flagfile=experiments/flags/digits_cnn.flags", "--cnn.features=4,4", "--cnn.hidden=8",
                   *TINY, "--steps=5", "--warmup_steps=1", workdir=tmp_path)
  summary = explain.explain(str(tmp_path), ["integrated_gradients", "grad_cam", "occlusion"],
                            explain.defaults(examples=3, steps=8, plot_examples=2, faithfulness=True), str(tmp_path / "x"))
  arrays = np.load(tmp_path / "x" / "attributions.npz")
  assert arrays["x"].shape == (3, 8, 8, 1)
  assert arrays["grad_cam"].shape == arrays["occlusion"].shape == (3, 8, 8, 1)
  assert (tmp_path / "x" / "methods.png").exists() and "random" in summary["faithfulness"]
  assert summary["methods"]["integrated_gradients"]["completeness"]["fraction_within_1pct"] >= 0


def test_explain_a_language_model(tmp_path):
  train_in_process("--flagfile=experiments/flags/shakespeare_char_gpt_cpu.flags", "--steps=2", "--warmup_steps=1",
                   "--gpt.num_layers=1", "--gpt.embed_dim=16", "--gpt.num_heads=2", "--eval_every=0",
                   "--block_size=16", "--batch_size=2", "--eval_batch_size=2", "--final_eval_batches=0",
                   "--eval_batches=1", "--sample.tokens=0", "--checkpoint_every=0", workdir=tmp_path)
  out = tmp_path / "explain"
  summary = explain.explain(str(tmp_path), ["integrated_gradients", "occlusion", "attention"],
                            explain.defaults(examples=2, length=12, steps=32, plot_examples=1), str(out))
  arrays = np.load(out / "attributions.npz")
  assert arrays["x"].shape == arrays["integrated_gradients"].shape == arrays["occlusion"].shape == (2, 12)
  assert arrays["attention/block0/attention"].shape == (2, 2, 12, 12)
  assert arrays["attention/rollout"].shape == (2, 12, 12)
  assert summary["methods"]["integrated_gradients"]["completeness"]["max_relative_gap"] < 0.05
  for name in ("integrated_gradients.png", "integrated_gradients.html", "occlusion.html", "attention.png"):
    assert (out / name).stat().st_size > 0, name
  assert "<span" in (out / "integrated_gradients.html").read_text(encoding="utf-8")
  prompt = explain.explain(str(tmp_path), ["integrated_gradients"], explain.defaults(prompt="ROMEO:", steps=8),
                           str(tmp_path / "prompt"))
  assert prompt["examples"] == 1
  with pytest.raises(ConfigError, match="--method=smoothgrad needs real-valued inputs; this model reads tokens"):
    explain.explain(str(tmp_path), ["smoothgrad"], explain.defaults(examples=1, length=12), str(out))


def test_explain_a_vae_encoder(tmp_path):
  train_in_process("--flagfile=experiments/flags/vae_mnist1d.flags", *TINY, "--steps=3", "--elbo.iwae_samples=2",
                   workdir=tmp_path)
  summary = explain.explain(str(tmp_path), ["integrated_gradients"], explain.defaults(examples=2, steps=8),
                            str(tmp_path / "x"))
  arrays = np.load(tmp_path / "x" / "attributions.npz")
  assert arrays["integrated_gradients"].shape == (2, 40) and summary["examples"] == 2
  with pytest.raises(ConfigError, match="--faithfulness tracks the probability of a class; the run is not a "
                                        "classifier .--objective=elbo."):
    explain.explain(str(tmp_path), ["gradient"], explain.defaults(examples=2, faithfulness=True), str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="--method=grad_cam needs a convolutional layer; vae has none .its layers: "):
    explain.explain(str(tmp_path), ["grad_cam"], explain.defaults(examples=2), str(tmp_path / "x"))
