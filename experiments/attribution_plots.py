"""Pictures of attributions (`python -m experiments.explain` draws them): signals with the
attribution as colour along the curve, images under a heat map, text with per-character
shading (PNG and HTML), attention maps as grids, and the trust checks' curves."""

from __future__ import annotations

import html
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.collections import LineCollection  # pylint: disable=g-import-not-at-top,wrong-import-position

CMAP = "coolwarm"  # blue: against the target, red: for it


def _limit(a: np.ndarray) -> float:
  m = float(np.abs(a).max())
  return m if m > 0 else 1.0


def _signal(ax, x: np.ndarray, a: np.ndarray) -> None:
  """A 1D signal (channels summed for colour) drawn with each segment coloured by attribution."""
  x = x.reshape(len(x), -1)
  a = a.reshape(len(a), -1).sum(-1) if a.ndim > 1 else a
  if len(a) != len(x):  # a coarser map (Grad-CAM at a strided layer): stretch it over the signal
    a = np.interp(np.linspace(0, len(a) - 1, len(x)), np.arange(len(a)), a)
  t = np.arange(len(x))
  for c in range(x.shape[1]):
    points = np.stack([t, x[:, c]], 1)[:, None]
    segments = np.concatenate([points[:-1], points[1:]], axis=1)
    lines = LineCollection(segments, cmap=CMAP, norm=plt.Normalize(-_limit(a), _limit(a)), linewidth=2.5)
    lines.set_array((a[:-1] + a[1:]) / 2)
    ax.add_collection(lines)
  ax.scatter(t, x[:, 0], c=a, cmap=CMAP, vmin=-_limit(a), vmax=_limit(a), s=8, zorder=3)
  ax.set_xlim(-1, len(x))
  pad = 0.1 * (x.max() - x.min() + 1e-6)
  ax.set_ylim(x.min() - pad, x.max() + pad)


def _image(ax, x: np.ndarray, a: np.ndarray) -> None:
  """A grey image with the attribution (channels summed) over it, stretched to its size."""
  grey = x.mean(-1) if x.ndim == 3 else x
  a = a.sum(-1) if a.ndim == 3 else a
  ax.imshow(grey, cmap="gray_r", interpolation="nearest")
  extent = (-0.5, grey.shape[1] - 0.5, grey.shape[0] - 0.5, -0.5)
  ax.imshow(a, cmap=CMAP, vmin=-_limit(a), vmax=_limit(a), alpha=0.6, extent=extent, interpolation="nearest")


def draw(ax, kind: str, x: np.ndarray, a: np.ndarray) -> None:
  (_signal if kind == "signal" else _image)(ax, x, a)
  ax.set_xticks([])
  ax.set_yticks([])


def methods_grid(path: str, kind: str, x: np.ndarray, maps: dict[str, np.ndarray], titles: Sequence[str]) -> None:
  """Rows: examples; columns: the input, then each method's attribution of it."""
  rows, cols = len(x), len(maps) + 1
  fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
  for i in range(rows):
    draw(axes[i, 0], kind, x[i], np.zeros(x[i].shape[:1] if kind == "signal" else x[i].shape))
    axes[i, 0].set_ylabel(titles[i], fontsize=8)
    for j, (name, a) in enumerate(maps.items(), start=1):
      draw(axes[i, j], kind, x[i], a[i])
      if i == 0:
        axes[i, j].set_title(name.replace("_", " "), fontsize=9)
  axes[0, 0].set_title("input", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _shade(value: float, limit: float) -> tuple[float, float, float, float]:
  return plt.get_cmap(CMAP)(0.5 + 0.5 * value / limit)


def text_png(path: str, texts: Sequence[Sequence[str]], scores: np.ndarray, titles: Sequence[str],
             per_line: int = 64) -> None:
  """Each example's characters on a grid, each on a background shaded by its attribution."""
  lines = [(i, k) for i, t in enumerate(texts) for k in range(0, len(t), per_line)]
  fig, ax = plt.subplots(figsize=(per_line * 0.16 + 0.5, 0.3 * (len(lines) + 2 * len(texts)) + 0.5))
  ax.set_xlim(0, per_line)
  ax.set_axis_off()
  row = 0
  for i, chars in enumerate(texts):
    limit = _limit(scores[i])
    ax.text(0, row + 0.5, titles[i], fontsize=8, va="center", fontweight="bold")
    row += 1
    for k in range(0, len(chars), per_line):
      for j, ch in enumerate(chars[k:k + per_line]):
        ax.add_patch(plt.Rectangle((j, row), 1, 1, color=_shade(scores[i][k + j], limit)))
        ax.text(j + 0.5, row + 0.5, "⏎" if ch == "\n" else ch, ha="center", va="center", fontsize=8,
                family="monospace")
      row += 1
    row += 1
  ax.set_ylim(row, 0)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def text_html(path: str, texts: Sequence[Sequence[str]], scores: np.ndarray, titles: Sequence[str]) -> None:
  parts = ["<!doctype html><meta charset='utf-8'><body style='font-family:monospace'>"]
  for i, chars in enumerate(texts):
    limit = _limit(scores[i])
    parts.append(f"<h4>{html.escape(titles[i])}</h4><p style='white-space:pre-wrap;line-height:1.6'>")
    for ch, s in zip(chars, scores[i]):
      r, g, b, _ = _shade(float(s), limit)
      parts.append(f"<span title='{float(s):.4g}' style='background:rgb({int(255 * r)},{int(255 * g)},"
                   f"{int(255 * b)})'>{html.escape(ch)}</span>")
    parts.append("</p>")
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(parts) + "</body>\n")


def attention_grid(path: str, maps: dict[str, np.ndarray], rollout: np.ndarray | None, labels: Sequence[str]) -> None:
  """One example's attention: rows are layers, columns heads (queries down, keys across),
  and the rollout across layers last."""
  names = list(maps)
  heads = maps[names[0]].shape[0]
  cols = heads + (rollout is not None)
  fig, axes = plt.subplots(len(names), cols, figsize=(2.2 * cols, 2.2 * len(names)), squeeze=False)
  ticks = range(len(labels)) if len(labels) <= 24 else []
  for r, name in enumerate(names):
    for h in range(cols):
      ax = axes[r, h]
      ax.set_xticks([])
      ax.set_yticks([])
      if h < heads:
        ax.imshow(maps[name][h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{name} head {h}", fontsize=7)
      elif r == 0:
        ax.imshow(rollout, cmap="viridis", vmin=0, vmax=max(float(rollout.max()), 1e-6))
        ax.set_title("rollout", fontsize=7)
      else:
        ax.set_axis_off()
      if ticks and h == 0:
        ax.set_yticks(list(ticks), [repr(c)[1:-1] for c in labels], fontsize=5)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def curves(path: str, fractions: np.ndarray, lines: dict[str, np.ndarray], ylabel: str, title: str,
           xlabel: str = "fraction of input positions changed") -> None:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, y in lines.items():
    ax.plot(fractions, y, label=name.replace("_", " "), linestyle="--" if name == "random" else "-")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sanity(path: str, layers: Sequence[str], lines: dict[str, np.ndarray], title: str) -> None:
  """Rank correlation with the trained model's attributions as layers are randomised top down."""
  fig, ax = plt.subplots(figsize=(1.0 * len(layers) + 3, 3.5))
  x = np.arange(len(layers) + 1)
  for name, y in lines.items():
    ax.plot(x, np.concatenate([[1.0], y]), marker="o", label=name.replace("_", " "))
  ax.set_xticks(x, ["trained"] + list(layers), rotation=30, fontsize=8)
  ax.axhline(0, color="k", linewidth=0.5)
  ax.set_ylabel("Spearman rank correlation (|attribution|)")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
