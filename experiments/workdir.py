"""A run's folder: checked before any data is read or program compiled, and held by one run.

`Workdir(path)`:
- `check()`: the folder exists or is created, is a folder, and can be written: one line
  (`ConfigError`) naming the path and the OS error otherwise;
- `lock()`: an exclusive lock (`fcntl.flock` on `path/.lock`) held until `release()` or the
  process ends, however it ends: the kernel drops a dead process's lock, so a lock left by a
  killed run is no lock. A second run started in the same folder stops at once with one
  line naming the first run's process id, host and start time. Folders on storage without
  POSIX locks (`gs://`, ...) are not locked.

Only process 0 of a multi-process run locks the folder the processes share.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from etils import epath

from experiments.config import ConfigError

LOCK = ".lock"


def is_local(path: str | os.PathLike) -> bool:
  return "://" not in os.fspath(path)


class Workdir:
  """A run's folder (module docstring)."""

  def __init__(self, path: str | os.PathLike):
    self.path = epath.Path(path)
    self._lock_file = None

  def check(self) -> None:
    """Creates the folder if needed and checks that it can be written."""
    where = f"--workdir={self.path}"
    if self.path.exists() and not self.path.is_dir():
      raise ConfigError(f"{where} is a file, not a folder")
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      probe = self.path / f".write_test.{os.getpid()}"
      probe.write_text("")
      probe.unlink()
    except OSError as e:
      raise ConfigError(f"{where} cannot be written: {e.strerror or e}") from None

  def lock(self) -> None:
    """Takes the folder for this run; ConfigError if another live run holds it."""
    if not is_local(self.path) or self._lock_file is not None:
      return
    path = os.fspath(self.path / LOCK)
    f = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with  (held for the run)
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.seek(0)
      holder = f.read().strip()
      f.close()
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise ConfigError(f"--workdir={self.path}: cannot lock {path}: {e.strerror or e}") from None
      try:
        who = json.loads(holder)
        holder = f"pid {who['pid']} on {who['host']}, started {who['started']}"
      except (ValueError, KeyError, TypeError):
        holder = "another process"
      raise ConfigError(f"--workdir={self.path} is in use by another run ({holder}); wait for it to end "
                        "or choose another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")
    f.flush()
    self._lock_file = f

  def release(self) -> None:
    if self._lock_file is not None:
      fcntl.flock(self._lock_file, fcntl.LOCK_UN)
      self._lock_file.close()
      self._lock_file = None
