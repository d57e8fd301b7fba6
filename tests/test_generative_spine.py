"""The spine's support for generative families: frozen applies, one optimizer per player,
sample files, the 2D mode metric in summaries, catalog image/audio inputs and sample quality."""

import glob
import json
import os
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import nets

from conftest import FLAGS_DIR, ROOT, run_cli
from experiments import build, data, samples, train
from experiments import sample_quality as quality
from experiments.config import Config, ConfigError, Sample
from nets.apply import Apply


def test_frozen_apply_differentiates_inputs_not_parameters():
  model = nets.create("logreg", num_outputs=3)
  params = model.init(jax.random.key(0), jnp.ones((2, 4)))["params"]
  x = jnp.arange(8.0).reshape(2, 4)

  def loss(params, x, frozen):
    apply = Apply(model, params, {}, jax.random.key(1), train=True)
    return jnp.sum((apply.frozen if frozen else apply)(x) ** 2)

  g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x, True)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_params))
  assert float(jnp.abs(g_x).max()) > 0
  g_params_live, g_x_live = jax.grad(loss, argnums=(0, 1))(params, x, False)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_params_live)) > 0
  np.testing.assert_allclose(g_x, g_x_live, rtol=1e-6)  # same value, only the parameters are held


def test_frechet_distance_matches_closed_forms():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((20000, 2))
  assert quality.frechet_distance(a, rng.standard_normal((20000, 2))) < 0.01
  # Independent dimensions: ||mu_a - mu_b||^2 + sum (s_a - s_b)^2.
  b = rng.standard_normal((20000, 2)) * [2.0, 0.5] + [3.0, -1.0]
  expected = 3.0**2 + 1.0**2 + (2.0 - 1.0) ** 2 + (0.5 - 1.0) ** 2
  assert abs(quality.frechet_distance(a, b) - expected) < 0.1


def test_image_grid_and_wav(tmp_path):
  images = np.stack([np.full((8, 8, 1), i / 5) for i in range(5)])
  grid = samples.image_grid(images, columns=3)
  assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 1)
  np.testing.assert_allclose(grid[1:9, 10:18], images[1])
  samples.save_images(str(tmp_path / "g.png"), images)
  assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
  tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)
  samples.write_wav(str(tmp_path / "a.wav"), tone, 16000)
  with wave.open(str(tmp_path / "a.wav")) as f:
    assert (f.getframerate(), f.getnchannels(), f.getnframes()) == (16000, 1, 1600)
    pcm = np.frombuffer(f.readframes(1600), "<i2")
  np.testing.assert_allclose(pcm / 32767, tone, atol=1e-4)


def _gan_config(**kw):
  base = dict(dataset="mixture2d/ring", model="gan_mlp", objective="gan", model_hparams={"hidden": 16, "depth": 1},
              batch_size=64, eval_batch_size=500, steps=3, log_every=1, eval_every=0, checkpoint_every=0,
              sample=Sample(count=300), b1=0.5, shuffle_buffer=1000)  # a small buffer: 3 s less to fill
  base.update(kw)
  return Config(**base)


def test_each_player_has_its_own_optimizer(tmp_path):
  """With the generator's learning rate 0 only the discriminator moves, and the reverse."""
  source = data.load(_gan_config())
  batch = next(data.batches(_gan_config(shuffle=False), source))  # one batch for both configurations
  for lr, d_lr, moves, stays in ((0.0, 1e-2, "discriminator", "generator"), (1e-2, 1e-9, "generator", None)):
    config = _gan_config(learning_rate=lr, discriminator_learning_rate=d_lr)
    model, objective, tx, schedule, _ = build.build(config, source)
    state = build.init_state(model, tx, source.example, jax.random.key(0), None)
    new, _ = jax.jit(lambda s, b: train.train_step(s, b, jax.random.key(1), model=model, objective=objective,
                                                   tx=tx, schedule=schedule))(state, batch)
    change = {k: max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params[k]),
                                                                 jax.tree.leaves(new.params[k])))
              for k in ("generator", "discriminator")}
    assert change[moves] > 1e-4
    if stays:
      assert change[stays] == 0.0
    else:  # a tiny discriminator rate: Adam's steps are about the rate
      assert change["discriminator"] < 1e-7


def test_gan_on_the_ring_reports_modes_and_writes_a_scatter_plot(tmp_path):
  summary = train.train_and_evaluate(_gan_config(), str(tmp_path))
  assert 0 <= summary["eval/modes"] <= 8 and 0.0 <= summary["eval/high_quality"] <= 1.0
  assert json.loads((tmp_path / "summary.json").read_text())["eval/modes"] == summary["eval/modes"]
  assert (tmp_path / "samples" / "step_000003.png").is_file()


def test_catalog_binary_images_stay_binary_and_audio_becomes_mu_law_ids():
  with tfds.testing.mock_data(num_examples=16):
    source = data.load(Config(dataset="binarized_mnist", eval_split="test", model="vae", objective="elbo"))
    assert source.example["x"].shape == (1, 28, 28, 1)
    assert set(np.unique(source.example["x"])) <= {0.0, 1.0}  # stored as 0/1 bytes, not 0..255
    source = data.load(Config(dataset="speech_commands", eval_split="test", model="wavenet", objective="lm",
                              block_size=8))
  assert source.tokenizer.size == 256 and source.example["x"].shape == (1, 8)
  assert source.example["x"].dtype == np.int32 and 0 <= source.example["x"].min() <= source.example["x"].max() < 256
  np.testing.assert_array_equal(source.example["y"][0, :-1], source.example["x"][0, 1:])


def test_sample_quality_scores_a_generator_with_a_trained_classifier(tmp_path, monkeypatch):
  from test_flags import parse
  monkeypatch.chdir(ROOT)
  classifier, generator = tmp_path / "classifier", tmp_path / "generator"
  small = ["--eval_every=0", "--log_every=10", "--checkpoint_every=0"]
  train.train_and_evaluate(parse("--flagfile=experiments/flags/digits_cnn.flags", "--steps=30", "--warmup_steps=5",
                                 *small), str(classifier))
  train.train_and_evaluate(parse("--flagfile=experiments/flags/vae_digits.flags", "--steps=5", "--elbo.iwae_samples=2",
                                 *small), str(generator))
  proc = run_cli(f"--workdir={generator}", f"--classifier={classifier}", "--num_samples=200",
                 module="experiments.sample_quality")
  result = json.loads((generator / "sample_quality.json").read_text())
  assert result == json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["frechet_distance"] > result["frechet_distance_real"] >= 0
  assert 0.1 <= result["confidence"] <= 1.0 and 0 <= result["class_entropy"] <= np.log(10) + 1e-6
  with pytest.raises(ConfigError, match="does not generate"):
    quality.score(str(classifier), str(generator))


CATALOG_FLAG_FILES = sorted(glob.glob(os.path.join(FLAGS_DIR, "catalog", "*.flags")))
# Same families, narrower, to keep compilation short.
CATALOG_SMALLER = {"wavenet_speech_commands.flags": ["--wavenet.dilations=1,2,4"],
                   "dcgan_mnist.flags": ["--dcgan.features=16"],
                   "vae_binarized_mnist.flags": ["--elbo.iwae_samples=4"]}


@pytest.mark.parametrize("path", CATALOG_FLAG_FILES, ids=os.path.basename)
def test_catalog_flag_files_run_two_steps_on_mock_data(path, tmp_path, monkeypatch):
  """Flag files for TFDS catalog datasets (which need internet) run on mock data of their features."""
  from test_flags import TINY, parse
  monkeypatch.chdir(ROOT)
  small = ["--batch_size=8", "--eval_batch_size=8", "--sample.count=4", "--block_size=16", "--eval_batches=1"]
  config = parse(f"--flagfile={path}", *TINY, *small, *CATALOG_SMALLER.get(os.path.basename(path), []))
  with tfds.testing.mock_data(num_examples=32):
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 2 and all(v == v for v in summary.values())
  written = sorted(os.listdir(tmp_path / "samples"))
  assert written == (["step_000002.wav"] if config.model == "wavenet" else
                     ["step_000002.png"] + (["step_000002_reconstructions.png"] if config.model == "vae" else []))
