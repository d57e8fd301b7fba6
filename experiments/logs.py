"""Where a run reports: metrics.jsonl, TensorBoard events, a progress line, and the clock
behind its rate."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Mapping

import jax
import numpy as np
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Clock:
  """Time spent in training steps, paused spans (evaluation, checkpoints) excluded: the rate
  and ETA of the progress line, and the run's mean steps/s."""

  def __init__(self, start_step: int, total_steps: int):
    self.total_steps = total_steps
    self._origin = (start_step, time.perf_counter())
    self._lap = self._origin
    self._paused = 0.0  # seconds paused since the last lap
    self._paused_total = 0.0

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      dt = time.perf_counter() - t
      self._paused += dt
      self._paused_total += dt

  def lap(self, step: int) -> tuple[float | None, float | None]:
    """Steps/s since the previous lap, and the seconds left at that rate."""
    now = time.perf_counter()
    steps, seconds = step - self._lap[0], now - self._lap[1] - self._paused
    self._lap, self._paused = (step, now), 0.0
    if steps <= 0 or seconds <= 0:
      return None, None
    rate = steps / seconds
    return rate, (self.total_steps - step) / rate

  def steps_per_sec(self, step: int) -> float:
    steps = step - self._origin[0]
    seconds = time.perf_counter() - self._origin[1] - self._paused_total
    return steps / seconds if steps > 0 and seconds > 0 else math.nan


class Logger:
  """Writes metrics from process 0 only; every other process's calls do nothing."""

  def __init__(self, workdir: str | os.PathLike, total_steps: int, tokens_per_step: int | None = None,
               start_step: int = 0, ended: bool | None = None, clients_per_round: int | None = None):
    """A run resumed from `start_step` writes again what its log holds after that step (and,
    when it resumes where it `ended` (default: at `total_steps`), its final evaluation, the
    rows with test metrics): those rows are dropped, so each step appears once. A federated
    run's steps are rounds of `clients_per_round` client updates each: its progress line says
    rounds/s and client updates/s."""
    ended = start_step == total_steps if ended is None else ended
    self.chief = jax.process_index() == 0
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self.clients_per_round = clients_per_round
    if self.chief:
      workdir = epath.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      path = workdir / "metrics.jsonl"
      at_start = []  # the rows kept at start_step
      if path.exists():
        kept = []
        for line in path.read_text().splitlines(keepends=True):
          row = json.loads(line) if line.strip() else None
          if row and (row["step"] < start_step or (row["step"] == start_step and not (
              ended and any(k.startswith("eval/") for k in row)))):
            kept.append(line)
            at_start += [row] if row["step"] == start_step else []
        write_atomic(path, "".join(kept))
      self._jsonl = path.open("a")
      # TensorBoard's own event writer (plain protocol buffers: no TensorFlow op per scalar).
      self._tb = EventFileWriter(os.fspath(workdir / "tensorboard"))
      if start_step:
        # TensorBoard drops the earlier files' events from this step on (one run, each step
        # once); the rows kept at this step are written again after the marker.
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=start_step,
                                           session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        for row in at_start:
          self._event(row.pop("step"), row)

  def _event(self, step: int, metrics: Mapping[str, float]) -> None:
    values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))
    self._tb.flush()

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.chief:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()
    self._event(step, clean)

  def progress(self, step: int, metrics: Mapping[str, float], rate: float | None,
               eta: float | None) -> None:
    """Prints one line: step, the objective's training metrics, steps/s (tokens/s) and ETA."""
    if not self.chief:
      return
    unit = "round" if self.clients_per_round else "step"
    parts = [f"{unit} {step:>{len(str(self.total_steps))}}/{self.total_steps}"]
    parts += [f"{k[len('train/'):]} {fmt_value(v)}" for k, v in metrics.items()
              if k.startswith("train/") and k[len("train/"):] not in _NOT_SHOWN]
    if rate:
      parts.append(f"{rate:.1f} {unit}s/s")
      if self.clients_per_round:
        parts.append(f"{rate * self.clients_per_round:,.0f} client updates/s")
      if self.tokens_per_step:
        parts.append(f"{rate * self.tokens_per_step / 1000:.1f}k tok/s")
      parts.append(f"ETA {_fmt_duration(eta)}")
    print(" | ".join(parts), flush=True)

  def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
    """Prints an evaluation's metrics: one line per split ("val/", then "eval/")."""
    if not self.chief:
      return
    for prefix in ("val", "eval"):
      parts = [f"{k[len(prefix) + 1:]} {fmt_value(v)}" for k, v in metrics.items()
               if k.startswith(prefix + "/") and k[len(prefix) + 1:] not in _NOT_SHOWN]
      if parts:
        print(f"{prefix} {step:>{len(str(self.total_steps))}}/{self.total_steps} | " + " | ".join(parts), flush=True)

  def info(self, message: str) -> None:
    if self.chief:
      print(message, flush=True)

  def close(self) -> None:
    if self.chief:
      self._jsonl.close()
      self._tb.close()


# Logged to metrics.jsonl and TensorBoard, but too many for the progress line.
_NOT_SHOWN = ("grad_norm", "update_norm", "param_norm", "learning_rate", "cross_entropy", "bits_per_token",
              "teacher_forced_match")


def fmt_value(v: float) -> str:
  v = float(v)
  if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
    return f"{v:.3e}"
  return f"{v:.4f}"


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` into `path` atomically: a temporary file beside it, then renamed (any
  etils.epath folder, cloud storage too)."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  if isinstance(data, bytes):
    tmp.write_bytes(data)
  else:
    tmp.write_text(data)
  tmp.replace(path)


def write_json(path: str | os.PathLike, payload: Mapping) -> None:
  """Writes JSON atomically."""
  write_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  return str(x)


