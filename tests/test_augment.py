"""Data augmentation (nets/augment.py): shapes and labels kept, a function of the key, each
transformation what it says; mixed labels in the classification loss; a resumed augmented
run is bit-identical; flags that do not fit the data are one line."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from conftest import train_in_process
from experiments import checkpoint
from experiments.config import ConfigError
from nets import augment

SIGNALS = {"x": jnp.asarray(np.random.default_rng(0).normal(size=(16, 40)), jnp.float32), "y": jnp.arange(16) % 10}
IMAGES = {"x": jnp.asarray(np.random.default_rng(1).uniform(size=(16, 8, 8, 1)), jnp.float32), "y": jnp.arange(16) % 10}

EACH = {
    "shift": (SIGNALS, dict(shift_steps=5)), "shift_zeros": (SIGNALS, dict(shift_steps=5, shift_circular=False)),
    "scale": (SIGNALS, dict(scale_amount=0.2)), "noise": (SIGNALS, dict(noise_std=0.1)),
    "stretch": (SIGNALS, dict(stretch_amount=0.2)), "crop": (IMAGES, dict(crop_padding=2)),
    "flip": (IMAGES, dict(flip_images=True)), "mixup_signals": (SIGNALS, dict(mixup_alpha=0.4)),
    "cutmix_signals": (SIGNALS, dict(cutmix_alpha=1.0)), "cutmix_images": (IMAGES, dict(cutmix_alpha=1.0)),
    "both": (IMAGES, dict(mixup_alpha=0.4, cutmix_alpha=1.0, crop_padding=1, flip_images=True)),
}


@pytest.mark.parametrize("name", EACH)
def test_every_augmentation_keeps_shapes_and_labels_and_is_a_function_of_the_key(name):
  batch, kwargs = EACH[name]
  fn = jax.jit(augment.pipeline(**kwargs))
  out = fn(batch, jax.random.key(0))
  assert out["x"].shape == batch["x"].shape and out["x"].dtype == batch["x"].dtype
  np.testing.assert_array_equal(out["y"], batch["y"])
  np.testing.assert_array_equal(fn(batch, jax.random.key(0))["x"], out["x"])  # the same key: the same batch
  assert not np.array_equal(fn(batch, jax.random.key(1))["x"], out["x"])
  assert not np.array_equal(out["x"], batch["x"])
  if "mix_y" in out:
    assert out["mix_y"].shape == batch["y"].shape and np.all((0 <= out["mix_weight"]) & (out["mix_weight"] <= 1))


def test_each_transformation_does_what_it_says():
  x = SIGNALS["x"]
  rolled = augment.shift(jax.random.key(0), x, 5)
  for a, b in zip(np.asarray(rolled), np.asarray(x)):  # a roll by at most 5
    assert any(np.array_equal(a, np.roll(b, s)) for s in range(-5, 6))
  zeros = np.asarray(augment.shift(jax.random.key(0), x, 5, circular=False))
  for a, b, r in zip(zeros, np.asarray(x), np.asarray(rolled)):  # the same move, zeros where it wrapped
    assert np.all((a == r) | (a == 0)) and np.sum(a == 0) <= 5
  ratio = np.asarray(augment.scale(jax.random.key(0), x, 0.2)) / np.asarray(x)
  assert np.allclose(ratio, ratio[:, :1], rtol=1e-5) and np.all((0.8 <= ratio) & (ratio <= 1.2))
  np.testing.assert_allclose(augment.stretch(jax.random.key(0), x, 1e-7), x, atol=1e-5)  # a factor of 1
  images = IMAGES["x"]
  np.testing.assert_array_equal(augment.crop(jax.random.key(0), images, 0), images)
  flipped = np.asarray(augment.flip(jax.random.key(0), images))
  mirrored = [np.array_equal(f, np.asarray(i)[:, ::-1]) for f, i in zip(flipped, images)]
  assert all(m or np.array_equal(f, i) for m, f, i in zip(mirrored, flipped, np.asarray(images))) and 0 < sum(mirrored) < 16
  # cutmix: the label weight is the share of each example's own pixels (all values distinct;
  # an example drawn as its own partner keeps them all, whatever its weight).
  mixed = augment.cutmix(jax.random.key(3), IMAGES, 1.0)
  own = np.mean((np.asarray(mixed["x"]) == np.asarray(images)).reshape(16, -1), axis=1)
  assert np.all(np.isclose(mixed["mix_weight"], own, atol=1e-6) | (own == 1)) and np.sum(own < 1) >= 8


def test_mixed_labels_mix_the_classification_loss():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 5)), jnp.float32)
  batch = {"x": x, "y": jnp.asarray([0, 1, 2, 0, 1, 2]), "mix_y": jnp.asarray([2, 2, 0, 1, 0, 1]),
           "mix_weight": jnp.asarray([1.0, 0.0, 0.5, 0.25, 0.75, 0.6])}
  logits = x[:, :3] * 2.0
  apply = lambda inputs: inputs[:, :3] * 2.0  # a fixed "model"
  out = nets.objectives.Classification()(apply, batch, jax.random.key(0))
  ce = functools.partial(optax.softmax_cross_entropy_with_integer_labels, logits)
  w = batch["mix_weight"]
  np.testing.assert_allclose(out["loss"], w * ce(batch["y"]) + (1 - w) * ce(batch["mix_y"]), rtol=1e-6)
  np.testing.assert_array_equal(out["accuracy"], (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32))


AUGMENTED = ["--model=mlp", "--mlp.features=32", "--batch_size=50", "--log_every=10", "--eval_every=0",
             "--checkpoint_every=20", "--seed=2", "--augment.shift=4", "--augment.scale=0.1", "--augment.noise=0.05",
             "--augment.stretch=0.1", "--augment.mixup=0.3", "--augment.cutmix=1.0"]


def test_a_resumed_augmented_run_is_bit_identical(tmp_path):
  train_in_process(*AUGMENTED, "--steps=40", workdir=tmp_path / "whole")
  train_in_process(*AUGMENTED, "--steps=20", workdir=tmp_path / "split")
  train_in_process(*AUGMENTED, "--steps=40", workdir=tmp_path / "split")
  a, b = (jax.tree.leaves(checkpoint.Checkpoints(os.fspath(tmp_path / d / "checkpoints")).restore_raw()["params"])
          for d in ("whole", "split"))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  train_in_process(*AUGMENTED[:7], "--steps=40", workdir=tmp_path / "plain")  # the same run without them
  plain = jax.tree.leaves(checkpoint.Checkpoints(os.fspath(tmp_path / "plain" / "checkpoints")).restore_raw()["params"])
  assert not np.array_equal(plain[0], a[0])


@pytest.mark.parametrize("args, message", [
    (["--augment.crop_padding=2"], r"^--augment.crop_padding do not apply to --dataset=mnist1d, which holds signals$"),
    (["--dataset=digits", "--augment.shift=3", "--augment.noise=0.1"],
     r"^--augment.shift, --augment.noise do not apply to --dataset=digits, which holds images$"),
    (["--augment.mixup=0.2", "--objective=regression"], r"^--augment.mixup and --augment.cutmix mix the labels"),
    (["--augment.scale=1.5"], r"^--augment.scale=1.5 must be below 1$"),
])
def test_augmentations_that_do_not_fit_are_one_line(args, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    train_in_process("--model=mlp", "--steps=2", *args, workdir=tmp_path)
