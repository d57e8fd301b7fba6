"""Orbax checkpoints of the train state: periodic, atomic, keep-last-N, resumable.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed while one is written leaves the one before intact. A checkpoint that cannot be read
(a file truncated or deleted inside it) is moved aside to `DIR.unreadable/STEP` and the run
resumes from the newest one that can (`restore_intact`). A checkpoint that cannot be
written (a full disk, a read-only folder) stops the run with one line naming the folder and
the operating system's error (`CheckpointError`); the ones before it stay as they were.
Paths go through `etils.epath`, so the folder may be on cloud storage (`gs://...`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from experiments.config import ConfigError


class CheckpointError(RuntimeError):
  """A checkpoint could not be written."""


class _OrbaxErrors(logging.Filter):
  """Drops Orbax's own error logs (each with a traceback, from each of its threads): every
  failure of a save or a restore reaches `Checkpoints` as an exception, which the run
  reports in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


logging.getLogger("absl").addFilter(_OrbaxErrors())


_abandoned = []  # saves that failed: their coroutines are collected with errors


def _closed_loop(exc: BaseException | None) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _quiet_abandoned_saves() -> None:
  """After a failed save, TensorStore's callbacks into Orbax's abandoned event loops each
  print "Event loop is closed" with a traceback, and the abandoned coroutines report errors
  as they are collected: drop those (any other error is printed as before)."""
  unraisable, excepthook = sys.unraisablehook, sys.excepthook
  sys.unraisablehook = lambda u: None if _abandoned or _closed_loop(u.exc_value) else unraisable(u)
  sys.excepthook = lambda kind, value, tb: None if _closed_loop(value) else excepthook(kind, value, tb)


def _reason(e: BaseException) -> str:
  """The innermost reason of an error: TensorStore's errors nest "context: context: reason"
  and end with the whole spec of the store."""
  text = " ".join(str(e).split(" [tensorstore_spec")[0].split())
  reason = text.rsplit('": ', 1)[-1] or type(e).__name__
  return reason if len(reason) <= 200 else reason[:100] + " ... " + reason[-95:]


_quiet_abandoned_saves()


def saved_steps(directory: str | epath.PathLike) -> list[int]:
  """The steps of the checkpoints in `directory` (its numbered folders), in order; none if it
  does not exist. Read from the listing alone: nothing is opened."""
  directory = epath.Path(directory)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


class Checkpoints:
  """A workdir's checkpoints (module docstring)."""

  def __init__(self, directory: str | epath.PathLike, keep: int = 3):
    directory = epath.Path(directory)
    self.directory = directory if "://" in str(directory) else directory.resolve()
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            # Asynchronous: save() takes the state's values and returns; a thread writes them
            # while training goes on (an MNIST-1D MLP's save: 48 -> 10 ms of the loop). The
            # next save, wait() and close() wait for it. On the CPU the values are views of
            # the state's buffers, which the step dispatched meanwhile then does not donate:
            # one more copy of the state in host memory while a save is written.
            enable_async_checkpointing=True))
    self._saving: int | None = None  # the step of the last save, written in the background

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _failed(self, step: int | str, e: BaseException) -> CheckpointError:
    _abandoned.append(step)
    return CheckpointError(f"cannot write the checkpoint of step {step} in {self.directory}: {_reason(e)}. "
                           "The checkpoints before it are intact; free the space or fix the folder, then run "
                           "the same command to resume")

  def save(self, step: int, state: Any) -> None:
    if step in self.manager.all_steps():
      return
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:  # pylint: disable=broad-except  (a write that failed, maybe the save before's)
      raise self._failed(self._saving if self._saving is not None else step, e) from None
    self._saving = step

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes and shardings of `like` (arrays or abstract).

    The shardings may differ from those the checkpoint was saved with: a checkpoint saved
    split over 4 devices restores on 1 device, on another mesh, or on several processes."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_intact(self, like: Any, move_aside: bool = True) -> tuple[Any, int]:
    """The newest checkpoint that can be read, and its step; (None, 0) if there is none.
    Unreadable ones are skipped with a one-line warning (and moved aside if `move_aside`);
    if every one is unreadable, ConfigError."""
    bad = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(like, step), step
      except Exception as e:  # pylint: disable=broad-except  (truncated, deleted or garbled files)
        aside = self.directory.parent / f"{self.directory.name}.unreadable" / str(step)
        for n in range(1, 1000):  # (one of that step moved aside before)
          if not aside.exists():
            break
          aside = aside.parent / f"{step}.{n}"
        if move_aside and jax.process_index() == 0:
          aside.parent.mkdir(parents=True, exist_ok=True)
          (self.directory / str(step)).rename(aside)
        print(f"warning: the checkpoint of step {step} cannot be read ({_reason(e)})"
              + (f"; moved to {aside}" if move_aside else "; skipped"), file=sys.stderr, flush=True)
        bad.append(step)
        if move_aside:
          self.manager.reload()
    if bad:
      raise ConfigError(f"no checkpoint in {self.directory} can be read (steps {', '.join(map(str, bad))}"
                        + (f", moved to {self.directory.name}.unreadable" if move_aside else "")
                        + "); choose another --workdir to start afresh")
    return None, 0

  def mismatches(self, like: Any) -> list[str]:
    """How the newest checkpoint whose metadata can be read does not fit the structure and
    shapes of `like`: arrays missing on either side, or of another shape (read from the
    metadata, not the arrays). Empty if they fit, or if no metadata can be read."""
    def shapes(tree):
      return {"/".join(re.findall(r"\w+", jax.tree_util.keystr(path))): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(leaf, "shape")}
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = shapes(self.manager.item_metadata(step))
        break
      except Exception:  # pylint: disable=broad-except  (unreadable: restore_intact says so)
        continue
    else:
      return []
    wanted = shapes(like)
    found = [f"{k} {saved[k]} saved, {wanted[k]} now" for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
    found += [f"{k} saved, not in this run" for k in sorted(set(saved) - set(wanted))]
    found += [f"{k} not saved" for k in sorted(set(wanted) - set(saved))]
    return found

  def restore_raw(self, step: int | None = None) -> Any:
    """The latest (or `step`'s) saved pytree as host arrays, without a target structure
    (whatever devices it was saved from)."""
    step = self.latest_step() if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = self.manager.item_metadata(step)
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(saved))
    return jax.device_get(self.manager.restore(step, args=ocp.args.StandardRestore(like)))

  def wait(self) -> None:
    """Returns once the checkpoints saved so far are on disk; CheckpointError if one failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(self._saving, e) from None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  (the failure wait() reported, again)
        pass


class Best:
  """The checkpoint of the best validation value so far, saved with its record (metric,
  value, step) in one Orbax checkpoint, so the two cannot disagree: `DIR/STEP`, one kept.

  `better(value)` compares with the record; `save` writes synchronously (it happens at an
  evaluation, rarely); `load(before)` takes the record of a resumed run, unless it is newer
  than the step the run resumes from (it is then deleted: the resumed run reaches it again,
  with the same numbers).
  """

  def __init__(self, directory: str | epath.PathLike, metric: str, mode: str):
    directory = epath.Path(directory)
    self.directory = directory if "://" in str(directory) else directory.resolve()
    self.metric, self.mode = metric, mode
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False))
    self.step: int | None = None
    self.value: float | None = None
    self.metrics: dict[str, float] = {}  # the best evaluation's metrics

  def load(self, before: int) -> None:
    step = self.manager.latest_step()
    if step is None:
      return
    if step > before:
      self.manager.delete(step)
      return
    record = self.manager.restore(step, args=ocp.args.Composite(best=ocp.args.JsonRestore())).best
    if record.get("metric") == self.metric:  # (another --best_metric starts afresh)
      self.step, self.value, self.metrics = step, float(record["value"]), dict(record["metrics"])

  def better(self, value: float) -> bool:
    """Whether `value` beats the best so far (a NaN or infinity never does)."""
    if not math.isfinite(value):
      return False
    return self.value is None or (value < self.value if self.mode == "min" else value > self.value)

  def save(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    value = float(metrics[self.metric])
    record = {"metric": self.metric, "value": value, "step": step, "metrics": metrics}
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      best=ocp.args.JsonSave(record)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      _abandoned.append(step)
      raise CheckpointError(f"cannot write the best checkpoint (step {step}) in {self.directory}: {_reason(e)}") from None
    self.step, self.value, self.metrics = step, value, dict(metrics)

  def restore(self, like: Any) -> Any:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self.manager.restore(self.step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state

  def close(self) -> None:
    self.manager.close()
