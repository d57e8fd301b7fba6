"""The faults and bad inputs a new user hits (issue 34): each gets one clear line or a safe
recovery, and no traceback. Faults are real: a second process, a truncated checkpoint file,
SIGINT to a child process, a read-only and a full file system, a download that cannot
connect. (A killed run's logs: tests/test_resume.py.)"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import fsspec
import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from conftest import ROOT, run_cli, train_in_process
from experiments import checkpoint, config as config_lib, data, logs, train
from experiments import workdir as workdir_lib
from experiments.config import ConfigError

# A small run that saves often; the MLP is the cheapest model to compile.
RUN = ["--model=mlp", "--mlp.features=32", "--batch_size=50", "--log_every=10", "--eval_every=0",
       "--checkpoint_every=10", "--keep_checkpoints=5", "--seed=3"]


def _steps(workdir):
  return checkpoint.Checkpoints(str(workdir / "checkpoints")).manager.all_steps()


def _popen(*args, data_dir=None):
  env = {**os.environ, "TFDS_DATA_DIR": data_dir} if data_dir else None
  return subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc):
  for line in proc.stdout:
    if re.match(r"^step +\d+/", line):
      return line
  raise AssertionError(f"no step line:\n{proc.stderr.read()[-3000:]}")


def _no_traceback(text):
  assert "Traceback" not in text, text[-3000:]


# 1. One run per workdir.
def test_a_second_run_in_a_busy_workdir_stops_naming_the_first_and_a_dead_runs_lock_is_no_lock(tmp_path):
  # The first run's hold on the folder, in another process (what a run does before reading data).
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import time
      from experiments.workdir import Workdir
      folder = Workdir({str(tmp_path)!r})
      folder.check()
      folder.lock()
      print("locked", flush=True)
      time.sleep(600)
      """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^--workdir={re.escape(str(tmp_path))} is in use by another run "
                       rf"\(pid {holder.pid} on {re.escape(socket.gethostname())}, started .*\); wait for it"):
      train_in_process(*RUN, "--steps=20", workdir=tmp_path)
    assert time.perf_counter() - start < 5  # before any data or compilation
  finally:
    holder.kill()  # kill -9: the lock file stays in the folder, and the kernel has dropped the lock
    holder.communicate()
  assert str(holder.pid) in (tmp_path / workdir_lib.LOCK).read_text()
  assert train_in_process(*RUN, "--steps=20", workdir=tmp_path)["step"] == 20


# 2. Non-finite flags; the guard saves no non-finite state and names a checkpoint that exists.
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_float_flags_are_refused(value, tmp_path):
  for flag in ("--learning_rate", "--weight_decay", "--mlp.dropout", "--sample.temperature"):
    with pytest.raises(ConfigError, match=f"^{re.escape(flag)}={value} must be a finite number$"):
      train_in_process("--model=mlp", f"{flag}={value}", workdir=tmp_path)


def test_the_nan_guard_never_saves_a_non_finite_state(tmp_path):
  # float32 cannot hold the learning rate: the first update makes the parameters infinite,
  # while the first loss (before it) is finite.
  with pytest.raises(train.NonFiniteLoss, match=r"the state became NaN or infinite by step 1; stopping. "
                     r"No checkpoint was saved before it"):
    train_in_process(*RUN, "--optimizer=sgd", "--learning_rate=1e39", "--checkpoint_every=1", "--steps=20",
                     workdir=tmp_path / "a")
  assert not (tmp_path / "a" / "checkpoints").exists() or not _steps(tmp_path / "a")

  with pytest.raises(train.NonFiniteLoss, match=r"loss is (nan|inf) at step \d+; stopping. The last good checkpoint "
                     r"\(step (\d+)\) is kept in") as e:
    train_in_process(*RUN, "--optimizer=sgd", "--learning_rate=1e30", "--checkpoint_every=1", "--log_every=1",
                     "--steps=20", workdir=tmp_path / "b")
  named = int(re.search(r"\(step (\d+)\)", str(e.value)).group(1))
  assert named == max(_steps(tmp_path / "b"))
  state = checkpoint.Checkpoints(str(tmp_path / "b" / "checkpoints")).restore_raw()
  assert all(np.all(np.isfinite(x)) for x in _leaves(state))


def _leaves(tree):
  if isinstance(tree, dict):
    return [leaf for v in tree.values() for leaf in _leaves(v)]
  return [np.asarray(tree)] if np.asarray(tree).dtype.kind == "f" else []


# 3. Unreadable checkpoints: the newest intact one, with a warning naming the bad step.
def test_a_truncated_or_gutted_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
  train_in_process(*RUN, "--steps=30", workdir=tmp_path)
  assert _steps(tmp_path) == [10, 20, 30]
  step30 = [p for p in (tmp_path / "checkpoints" / "30").rglob("*") if p.is_file() and "/d/" in str(p)]
  assert step30, list((tmp_path / "checkpoints" / "30").rglob("*"))
  for p in step30:  # the arrays' data files, truncated
    p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 3])
  for p in (tmp_path / "checkpoints" / "20").rglob("*"):  # a file deleted
    if p.is_file() and "/d/" in str(p):
      p.unlink()
  capsys.readouterr()
  summary = train_in_process(*RUN, "--steps=40", workdir=tmp_path)
  out, err = capsys.readouterr()
  assert re.search(r"warning: the checkpoint of step 30 cannot be read \(.*\); moved to .*checkpoints.unreadable/30",
                   err), err
  assert "warning: the checkpoint of step 20 cannot be read" in err
  assert "Resumed from the checkpoint at step 10" in out
  assert summary["step"] == 40 and _steps(tmp_path) == [10, 20, 30, 40]
  assert sorted(p.name for p in (tmp_path / "checkpoints.unreadable").iterdir()) == ["20", "30"]

  for step in _steps(tmp_path):  # none intact
    for p in (tmp_path / "checkpoints" / str(step)).rglob("*"):
      if p.is_file() and "/d/" in str(p):
        p.write_bytes(b"")
  with pytest.raises(ConfigError, match=r"no checkpoint in .* can be read \(steps 40, 30, 20, 10"):
    train_in_process(*RUN, "--steps=50", workdir=tmp_path)


# 4. Resuming with other model flags: refused before anything is touched; allowed changes recorded.
def test_resuming_with_another_model_is_refused_and_allowed_changes_are_recorded(tmp_path, capsys):
  train_in_process(*RUN, "--steps=10", workdir=tmp_path)
  saved = (tmp_path / "flags.flags").read_text()
  others = [a for a in RUN if not a.startswith(("--model", "--mlp"))]
  for change, listed in ((["--model=mlp", "--mlp.features=64"], "--mlp.features=32 -> 64"),
                         (["--model=cnn", "--cnn.features=8,8,8"], "--model=mlp -> cnn"),
                         (["--model=mlp", "--mlp.features=32", "--dataset=digits"], "--dataset=mnist1d -> digits")):
    with pytest.raises(ConfigError, match=rf"holds a run of another model or data \({re.escape(listed)}\); "
                       r"choose another --workdir to start afresh"):
      train_in_process(*others, *change, "--steps=20", workdir=tmp_path)
    assert (tmp_path / "flags.flags").read_text() == saved
  capsys.readouterr()
  train_in_process(*RUN, "--steps=20", "--log_every=5", "--learning_rate=0.003", workdir=tmp_path)
  assert "with changed flags: --learning_rate=0.01 -> 0.003; --log_every=10 -> 5; --steps=10 -> 20" in (
      capsys.readouterr().out)
  assert json.loads((tmp_path / "resumes.jsonl").read_text()) == {
      "step": 10, "changed": ["--learning_rate=0.01 -> 0.003", "--log_every=10 -> 5", "--steps=10 -> 20"]}
  assert "--steps=20" in (tmp_path / "flags.flags").read_text()


# 5 and 9. Ctrl-C saves and exits 130 without a traceback; a log file gets no escape codes.
def test_ctrl_c_saves_a_checkpoint_and_exits_130_and_logs_are_plain_text(tmp_path):
  data_dir = tmp_path / "tfds"  # prepared afresh by this run: TFDS's progress output included
  data_dir.mkdir()
  proc = _popen(*RUN, "--steps=1000000", "--log_every=100", f"--workdir={tmp_path / 'run'}", data_dir=str(data_dir))
  _wait_for_step(proc)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err[-3000:]
  _no_traceback(err)
  stopped = re.search(r"SIGINT: saved the checkpoint at step (\d+)", out)
  assert stopped, out[-2000:]
  assert _steps(tmp_path / "run")[-1] == int(stopped.group(1))
  assert "\x1b" not in out + err and "\r" not in out + err


def test_a_second_ctrl_c_exits_at_once(tmp_path):
  # The loop is busy (here: asleep) after the first Ctrl-C; the second does not wait for it.
  script = textwrap.dedent("""
      import os, signal, time
      from experiments import train
      with train._Signals() as signals:
        signals.in_loop = True
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
      """)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 130 and time.perf_counter() - start < 30, proc.stderr
  assert proc.stderr.strip().splitlines() == ["error: stopped by a second Ctrl-C; nothing saved since the last "
                                              "checkpoint"]


# 7. The workdir is checked before any data is read; a failed checkpoint write is one line.
def test_a_workdir_that_is_a_file_or_read_only_stops_before_any_data(tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("data read before the workdir was checked")
  monkeypatch.setattr(data, "load", no_data)
  (tmp_path / "file").write_text("")
  with pytest.raises(ConfigError, match=r"^--workdir=.*/file is a file, not a folder$"):
    train_in_process(*RUN, workdir=tmp_path / "file")
  with pytest.raises(ConfigError, match=r"^--workdir=.*/file/run cannot be written: Not a directory$"):
    train_in_process(*RUN, workdir=tmp_path / "file" / "run")
  read_only = tmp_path / "ro"
  read_only.mkdir()
  with _mounted(read_only, "ro") if os.geteuid() == 0 else _chmod(read_only, 0o555):
    with pytest.raises(ConfigError, match=r"^--workdir=.*/ro/run cannot be written: (Read-only file system|"
                       r"Permission denied)$"):
      train_in_process(*RUN, workdir=read_only / "run")


class _mounted:
  """A small tmpfs mounted at `path` (root only)."""

  def __init__(self, path, options):
    self.path, self.options = str(path), options

  def __enter__(self):
    subprocess.run(["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", self.path], check=True)

  def __exit__(self, *exc):
    subprocess.run(["umount", "-l", self.path], check=True)


class _chmod:
  def __init__(self, path, mode):
    self.path, self.mode = path, mode

  def __enter__(self):
    os.chmod(self.path, self.mode)

  def __exit__(self, *exc):
    os.chmod(self.path, 0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root (CI runs as root)")
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_checkpoints_before(tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  # Each checkpoint of this model (parameters and Adam's two moments) takes about 0.6 MB: the
  # third does not fit in 1.5 MB, with every one kept.
  args = ["--model=mlp", "--mlp.features=128,128", "--batch_size=50", "--log_every=10", "--eval_every=0",
          "--checkpoint_every=10", "--keep_checkpoints=100", "--steps=200", f"--workdir={disk / 'run'}"]
  with _mounted(disk, "size=1500k"):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    _no_traceback(proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and re.match(r"error: cannot write the checkpoint of step \d+ in .*/disk/run/checkpoints: "
                                        r".*No space left on device.*The checkpoints before it are intact", lines[0]), (
                                            proc.stderr[-3000:])
    kept = _steps(disk / "run")
    assert kept and max(kept) < 200
    state = checkpoint.Checkpoints(str(disk / "run" / "checkpoints")).restore_raw(max(kept))
    assert int(state["step"]) == max(kept)


# 8. A catalog dataset, offline: one line within seconds.
def test_an_unprepared_catalog_dataset_offline_is_one_line_within_seconds(tmp_path):
  start = time.perf_counter()
  proc = run_cli("--dataset=mnist", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}", check=False,
                 env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""})
  assert time.perf_counter() - start < 60
  assert proc.returncode == 2
  _no_traceback(proc.stderr)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: --dataset=mnist is not prepared in {tmp_path} and could not be downloaded (ProxyError: "
                    "[Errno 111] Connection refused); prepare it where there is internet (tfds build mnist "
                    "--data_dir=DIR) and pass --data_dir=DIR"], proc.stderr[-3000:]


# 10 and 12. Evaluations printed; the end names the workdir; steps/s counts training steps only.
def test_evaluations_are_printed_and_the_final_evaluation_is_not_training_time(tmp_path, capsys, monkeypatch):
  evaluate = train.evaluate

  def slow_evaluate(*args, **kwargs):
    time.sleep(1.0)
    return evaluate(*args, **kwargs)
  monkeypatch.setattr(train, "evaluate", slow_evaluate)
  summary = train_in_process(*RUN, "--steps=40", "--eval_every=20", workdir=tmp_path)
  out = capsys.readouterr().out
  assert re.search(r"^eval 20/40 \| accuracy 0\.\d{4} \| loss \d\.\d{4}$", out, re.M), out
  assert re.search(r"^eval 40/40 \| accuracy", out, re.M)
  assert out.strip().splitlines()[-1] == (f"Workdir {tmp_path}. Train it further: python -m experiments.run "
                                          f"--flagfile={tmp_path}/flags.flags --steps=N")
  assert summary["final_eval_s"] >= 1.0
  assert summary["train_steps_per_sec"] > 40 / (summary["train_time_s"] - summary["final_eval_s"] - 1.0)


# 11. Cloud storage: every write of our own through epath, on a file system that is not the OS's.
class _FakeCloud(MemoryFileSystem):
  """fsspec's in-memory file system, standing in for gcsfs."""
  protocol = ("gs", "gcs")
  root_marker = ""
  store = {}
  pseudo_dirs = [""]


def test_workdir_files_go_through_epath_to_cloud_storage(monkeypatch):
  # epath's fsspec backend for gs://, not tf.io.gfile (which it picks where TensorFlow is installed,
  # and which has no file system to fake it with); EPATH_USE_TF=false does the same, read once.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  for name in _FakeCloud.protocol:
    fsspec.register_implementation(name, _FakeCloud, clobber=True)
  monkeypatch.setattr(logs, "EventFileWriter", lambda path: _NoEvents())  # TensorBoard writes through tf.io.gfile
  run = epath.Path("gs://bucket/run")
  folder = workdir_lib.Workdir(run)
  folder.check()
  folder.lock()  # not a POSIX file system: no lock, no error
  config = config_lib.from_flags(_values("--model=mlp", "--steps=7"))
  train._write_flagfile(config, run, 0, [])
  assert config_lib.from_workdir(run) == config
  log = logs.Logger(run, 7)
  log.write(5, {"train/loss": 1.0})
  log.write(7, {"train/loss": 0.5})
  log.close()
  logs.Logger(run, 7, start_step=5).close()  # resumed from step 5: step 7's row goes
  assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [5]
  logs.write_json(run / "summary.json", {"step": 7})
  assert json.loads((run / "summary.json").read_text()) == {"step": 7}
  written = sorted(k.split("bucket/run/", 1)[1] for k in _FakeCloud.store if "bucket/run/" in k)
  assert written == ["flags.flags", "metrics.jsonl", "summary.json"], written  # in the fake cloud, not on disk
  assert not os.path.exists("gs:") and not os.path.exists(os.path.join(ROOT, "gs:"))


class _NoEvents:
  def add_event(self, event):
    del event

  def flush(self):
    pass

  def close(self):
    pass


def _values(*args):
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["run", *args])
  return values
