"""The 2D Gaussian mixtures of the GAN mode-collapse literature, and their mode metric.

As PacGAN (Lin et al. 2018) and VEEGAN (Srivastava et al. 2017) set them up:

- "ring": 8 Gaussians with means (cos 2 pi k / 8, sin 2 pi k / 8), standard deviation 0.01;
- "grid": 25 Gaussians with means in {-4, -2, 0, 2, 4}^2, standard deviation 0.05.

`mode_coverage(samples, name)` scores generated samples: a sample is high quality if it is
within 3 standard deviations of its nearest mode; a mode is captured if it is the nearest
mode of at least one high-quality sample. The papers score 2,500 samples.
"""

from __future__ import annotations

import numpy as np

_RING = np.stack([np.cos(2 * np.pi * np.arange(8) / 8), np.sin(2 * np.pi * np.arange(8) / 8)], axis=1)
_GRID = np.stack(np.meshgrid(np.arange(-4.0, 5.0, 2.0), np.arange(-4.0, 5.0, 2.0), indexing="ij"), -1).reshape(-1, 2)
MIXTURES: dict[str, tuple[np.ndarray, float]] = {"ring": (_RING, 0.01), "grid": (_GRID, 0.05)}


def mixture(name: str) -> tuple[np.ndarray, float]:
  """(means [modes, 2], standard deviation) of mixture `name`."""
  try:
    return MIXTURES[name]
  except KeyError:
    raise ValueError(f"unknown mixture {name!r}; known: {', '.join(MIXTURES)}") from None


def sample(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """`n` points of mixture `name` (modes equally likely) and the index of each one's mode."""
  means, std = mixture(name)
  modes = rng.integers(0, len(means), size=n)
  return (means[modes] + std * rng.standard_normal((n, 2))).astype(np.float32), modes


def mode_coverage(samples: np.ndarray, name: str) -> dict[str, float]:
  """{"modes": modes captured, "high_quality": fraction of high-quality samples}."""
  means, std = mixture(name)
  samples = np.asarray(samples, np.float64).reshape(-1, 2)
  distances = np.linalg.norm(samples[:, None, :] - means[None, :, :], axis=-1)
  nearest = np.argmin(distances, axis=1)
  good = distances[np.arange(len(samples)), nearest] <= 3 * std
  return {"modes": float(len(np.unique(nearest[good]))), "high_quality": float(np.mean(good)) if len(good) else 0.0}
