"""What a generative run writes for people to look at, at each evaluation: workdir/samples/.

- Language models (`--objective=lm`): `--sample.tokens` tokens continued from a newline, with
  `--sample.temperature` and `--sample.top_k`, as text (`step_000250.txt`); on audio data
  (WaveNet) `--sample.tokens` audio samples as a 16-bit WAV file (`step_000250.wav`).
- Sequence-to-sequence models: the first evaluation examples, greedily decoded, beside their
  targets.
- Objectives that `generate` (VAE, GAN, diffusion): `--sample.count` samples as a PNG: an
  image grid, a plot of 1D signals, or a scatter plot of 2D points over the true modes. On
  the 2D mixtures (`mixture2d/*`) the samples are also scored (`nets.mixtures.mode_coverage`)
  and the writer returns `modes` and `high_quality`, logged as eval metrics.
- Objectives that `reconstruct` (autoencoders, VAE): the first evaluation inputs beside their
  reconstructions (`step_000250_reconstructions.png`).
"""

from __future__ import annotations

import functools
import io
import math
import os
import wave
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import numpy as np
from etils import epath

import nets
from nets.apply import Apply
from experiments import logs
from experiments.config import Config
from experiments.data import Batch, Source, Tokenizer

Writer = Callable[[Any, int], dict[str, float]]  # (train state, step) -> metrics


def _path(workdir: str | os.PathLike, step: int, suffix: str) -> epath.Path:
  directory = epath.Path(workdir) / "samples"
  directory.mkdir(parents=True, exist_ok=True)
  return directory / f"step_{step:06d}{suffix}"


def _write_text(workdir: str | os.PathLike, step: int, text: str) -> None:
  if jax.process_index() != 0:
    return
  logs.write_atomic(_path(workdir, step, ".txt"), text.encode("utf-8"))


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
  """Mono float audio in [-1, 1] as a 16-bit PCM WAV file (written atomically)."""
  pcm = (np.clip(np.asarray(audio, np.float64), -1.0, 1.0) * 32767).astype("<i2")
  buffer = io.BytesIO()
  with wave.open(buffer, "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(sample_rate)
    f.writeframes(pcm.tobytes())
  logs.write_atomic(path, buffer.getvalue())


def _figure():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str | os.PathLike) -> None:
  plt = _figure()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  logs.write_atomic(path, buffer.getvalue())


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
  """[N, H, W, C] images in [0, 1] -> one [rows*(H+1)+1, cols*(W+1)+1, C] grid with 1-pixel gaps."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 0.5, np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
  return grid


def save_images(path: str, images: np.ndarray, columns: int | None = None) -> None:
  """Images in [0, 1] as one PNG grid, enlarged so 8x8 digits are visible."""
  grid = image_grid(images, columns)
  scale = max(1, 256 // max(grid.shape[:2]))
  grid = np.kron(grid, np.ones((scale, scale, 1), np.float32))
  if grid.shape[-1] == 1:
    grid = np.repeat(grid, 3, axis=-1)
  buffer = io.BytesIO()
  _figure().imsave(buffer, grid, format="png")
  logs.write_atomic(path, buffer.getvalue())


def save_signals(path: str, signals: np.ndarray, references: np.ndarray | None = None) -> None:
  """1D signals as small line plots (with their references dashed, e.g. the inputs of reconstructions)."""
  plt = _figure()
  n = min(len(signals), 16)
  cols = 4
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 1.6 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      if references is not None:
        ax.plot(np.asarray(references[i]).ravel(), "k--", lw=0.8)
      ax.plot(np.asarray(signals[i]).ravel(), lw=1.2)
  _save(fig, path)


def save_points(path: str, points: np.ndarray, means: np.ndarray | None, title: str) -> None:
  """A scatter plot of 2D samples over the mixture's modes."""
  plt = _figure()
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, label="samples")
  if means is not None:
    ax.scatter(means[:, 0], means[:, 1], s=30, c="red", marker="x", label="modes")
    pad = 0.5 * (means.max() - means.min()) / max(len(means) ** 0.5, 1) + 0.5
    ax.set_xlim(means[:, 0].min() - pad, means[:, 0].max() + pad)
    ax.set_ylim(means[:, 1].min() - pad, means[:, 1].max() + pad)
  ax.set_aspect("equal")
  ax.set_title(title, fontsize=9)
  ax.legend(loc="upper right", fontsize=7)
  _save(fig, path)


def save_data(path: str, samples: np.ndarray, references: np.ndarray | None = None) -> None:
  """Samples of any kind of data: images (rank 4) or 1D signals (rank 2)."""
  if samples.ndim == 4:
    if references is not None:  # pairs: input above, reconstruction below, 8 per row
      n = min(len(samples), 32)
      pairs = []
      for start in range(0, n, 8):
        pairs += [references[start:start + 8], samples[start:start + 8]]
      save_images(path, np.concatenate(pairs), columns=8)
    else:
      save_images(path, samples)
  else:
    save_signals(path, samples.reshape(len(samples), -1), None if references is None else
                 references.reshape(len(references), -1))


def language_model_text(config: Config, model: nn.Module, tokenizer: Tokenizer) -> Callable[[Any, int], str]:
  """params, seed -> `config.sample.tokens` tokens of text continuing a newline."""
  generate = jax.jit(functools.partial(nets.decoding.sample, model, num_tokens=config.sample.tokens,
                                       temperature=config.sample.temperature, top_k=config.sample.top_k))
  try:
    prompt = tokenizer.encode("\n")
  except ValueError:  # no newline in the vocabulary: start from token 0
    prompt = np.zeros((1,), np.int32)

  def text(params, seed: int) -> str:
    tokens = generate(params, prompt=prompt[None], rng=jax.random.key(seed))
    return tokenizer.decode(np.asarray(tokens[0]).tolist())

  return text


def generator(model: nn.Module, objective: Any, num: int) -> Callable[[Any, jax.Array], jax.Array]:
  """(train state, rng) -> `num` samples of the objective's `generate`, jitted."""

  @jax.jit
  def generate(params, model_state, rng):
    return objective.generate(Apply(model, params, model_state, rng, train=False), rng, num)

  return lambda state, rng: generate(state.params, state.model_state, rng)


def reconstructor(model: nn.Module, objective: Any) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """(train state, inputs, rng) -> the objective's reconstructions of the inputs, jitted."""

  @jax.jit
  def reconstruct(params, model_state, x, rng):
    return objective.reconstruct(Apply(model, params, model_state, rng, train=False), x, rng)

  return lambda state, x, rng: reconstruct(state.params, state.model_state, x, rng)


def _mixture_name(config: Config) -> str | None:
  name, _, variant = config.dataset.partition("/")
  return variant if name == "mixture2d" and variant in nets.mixtures.MIXTURES else None


def writer(config: Config, model: nn.Module, objective: nets.objectives.Objective, source: Source,
           eval_batches: Iterable[Batch], workdir: str) -> Writer | None:
  """The samples writer of this run, or None when it has nothing to write."""
  tokenizer = source.tokenizer
  chief = jax.process_index() == 0
  if config.objective == "lm" and source.audio is not None and config.sample.tokens:
    return _audio_writer(config, model, source, workdir)
  if config.objective == "lm" and config.sample.tokens and tokenizer is not None:
    text = language_model_text(config, model, tokenizer)

    def write_text(state, step: int) -> dict[str, float]:
      _write_text(workdir, step, text(state.params, step))
      return {}

    return write_text
  if config.objective == "seq2seq" and tokenizer is not None:
    batch = next(iter(eval_batches))
    source_ids, target = batch["x"][:10], batch["y"][:10]
    translate = jax.jit(functools.partial(nets.decoding.greedy_translate, model, length=target.shape[1],
                                          bos_id=objective.bos_id, eos_id=objective.eos_id))

    def write_translations(state, step: int) -> dict[str, float]:
      decoded = np.asarray(translate(state.params, source_ids))
      lines = [f"{tokenizer.decode(s)} -> {tokenizer.decode(d)}" + ("" if (d == t).all() else
                                                                       f"   (target: {tokenizer.decode(t)})")
               for s, d, t in zip(source_ids.tolist(), decoded, target)]
      _write_text(workdir, step, "\n".join(lines) + "\n")
      return {}

    return write_translations
  generate = generator(model, objective, config.sample.count) if hasattr(objective, "generate") else None
  reconstruct = reconstructor(model, objective) if hasattr(objective, "reconstruct") else None
  if generate is None and reconstruct is None:
    return None
  inputs = next(iter(eval_batches))["x"][:32]
  mixture = _mixture_name(config)

  def write(state, step: int) -> dict[str, float]:
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    metrics = {}
    if generate is not None:
      samples = np.asarray(jax.device_get(generate(state, rng)), np.float32)
      if mixture is not None:
        metrics = nets.mixtures.mode_coverage(samples, mixture)
      if chief:
        if samples.ndim == 2 and samples.shape[1] == 2:
          means = nets.mixtures.mixture(mixture)[0] if mixture else None
          title = f"step {step}: {len(samples)} samples" + (
              f", {metrics['modes']:.0f} modes, {100 * metrics['high_quality']:.1f}% high quality" if metrics else "")
          save_points(_path(workdir, step, ".png"), samples, means, title)
        else:
          save_data(_path(workdir, step, ".png"), samples)
    if reconstruct is not None:  # every process joins the computation; process 0 writes it
      recon = np.asarray(jax.device_get(reconstruct(state, inputs, rng)), np.float32)
      if chief:
        save_data(_path(workdir, step, "_reconstructions.png"), recon, inputs)
    return metrics

  return write


def _audio_writer(config: Config, model: nn.Module, source: Source, workdir: str) -> Writer:
  """WaveNet: `sample_tokens` audio samples per evaluation, as a WAV file."""
  from nets import wavenet  # pylint: disable=g-import-not-at-top
  generate = jax.jit(functools.partial(wavenet.generate, model, num_samples=config.sample.tokens,
                                       temperature=config.sample.temperature or 1.0))

  def write(state, step: int) -> dict[str, float]:
    ids = np.asarray(generate(state.params, jax.random.fold_in(jax.random.key(config.seed), step)))
    if jax.process_index() == 0:
      write_wav(_path(workdir, step, ".wav"), source.tokenizer.decode(ids[0]), source.audio.sample_rate)
    return {}

  return write
