"""Multi-process runs (jax.distributed over gloo on CPU) and parameters sharded over "fsdp":

- 2 processes give the parameters of 1 process on the same global batch;
- --parallel.mesh=data:2,fsdp:2 on 4 fake devices gives the parameters of 1 device;
- its checkpoint (saved split over 4 devices) resumes on 1 device and on 2 processes (under
  pmap), and both end where the uninterrupted run ends;
- a process that dies makes the other stop with a clear error, soon.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TEST_XLA_FLAGS, run_cli, train_in_process

RUN = ["--flagfile=experiments/flags/mnist1d_mlp.flags", "--shuffle=true", "--optimizer=sgd", "--learning_rate=0.1", "--steps=20", "--log_every=10",
       "--eval_every=0", "--checkpoint_every=10"]
FOUR_DEVICES = {"XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=4"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(args, n=2, extra=()):
  """`n` processes of one run, connected through a coordinator on localhost."""
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # one CPU device per process
  return [subprocess.Popen([sys.executable, "-m", "experiments.run", *args, *extra,
                            f"--distributed.coordinator_address=localhost:{port}", f"--distributed.num_processes={n}",
                            f"--distributed.process_id={i}"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(n)]


def run_processes(args, n=2):
  procs = start_processes(args, n)
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"exit {p.returncode}\n{out[-2000:]}\n{err[-3000:]}"
  return outputs[0][0]


def params(workdir):
  from experiments import checkpoint  # pylint: disable=g-import-not-at-top
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
  state = ckpts.restore_raw()
  ckpts.close()
  import jax  # pylint: disable=g-import-not-at-top
  return int(state["step"]), jax.tree.leaves(state["params"])


def assert_same(a, b, tol=1e-5):
  step_a, leaves_a = params(a)
  step_b, leaves_b = params(b)
  assert step_a == step_b == 20
  assert len(leaves_a) == len(leaves_b)
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(leaves_a, leaves_b))
  assert diff < tol, f"{a} vs {b}: max |difference| {diff}"


def rewind(src, dst):
  """A copy of a finished run, as if it had been killed after its step-10 checkpoint."""
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, "checkpoints", "20"))
  os.remove(os.path.join(dst, "summary.json"))


def test_processes_meshes_and_checkpoints_agree(tmp_path, capsys):
  ref, two, fsdp = (str(tmp_path / name) for name in ("ref", "two", "fsdp"))
  train_in_process(*RUN, workdir=ref)  # this test process has one CPU device

  out = run_processes([*RUN, f"--workdir={two}"])
  assert "2 process(es), 2 device(s)" in out
  assert_same(ref, two)

  out = run_cli(*RUN, "--parallel.mesh=data:2,fsdp:2", f"--workdir={fsdp}", env=FOUR_DEVICES).stdout
  assert "4 device(s), --parallel.mode=jit, mesh data:2,fsdp:2" in out
  assert "fsdp: 2 of " in out, out  # the two weight matrices of at least 1024 elements (40x100, 100x100)
  assert_same(ref, fsdp)

  one = str(tmp_path / "resumed_on_1_device")
  rewind(fsdp, one)
  capsys.readouterr()
  train_in_process(*RUN, workdir=one)
  out = capsys.readouterr().out
  assert "Resumed from the checkpoint at step 10" in out and "; 1 device(s)" in out
  assert_same(ref, one)

  procs = str(tmp_path / "resumed_on_2_processes")  # and under pmap rather than jit
  rewind(fsdp, procs)
  out = run_processes([*RUN, "--parallel.mode=pmap", f"--workdir={procs}"])
  assert "Resumed from the checkpoint at step 10" in out and "--parallel.mode=pmap" in out
  assert_same(ref, procs)


def test_a_dead_process_stops_the_run(tmp_path):
  workdir = str(tmp_path / "run")
  args = [*RUN, "--steps=1000000", "--log_every=100", "--checkpoint_every=0", f"--workdir={workdir}"]
  chief, other = start_processes(args, extra=["--distributed.heartbeat_timeout=10"])
  try:
    # Wait until the processes train together (process 0 prints progress lines).
    deadline = time.time() + 120
    while time.time() < deadline:
      line = chief.stdout.readline()
      if line.startswith("step "):
        break
      assert chief.poll() is None, chief.stderr.read()[-3000:]
    else:
      pytest.fail("the two processes never started training")
    other.send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = chief.communicate(timeout=60)
    waited = time.time() - killed
  finally:
    for p in (chief, other):
      if p.poll() is None:
        p.kill()
  assert chief.returncode != 0
  assert "another process of the run died" in err or "heartbeat" in err, err[-3000:]
  assert waited < 30, waited


def test_mesh_flag():
  from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top
  from experiments.parallel import parse_mesh  # pylint: disable=g-import-not-at-top
  assert parse_mesh("", 8) == {"data": 8, "fsdp": 1}
  assert parse_mesh("data:2,fsdp:4", 8) == {"data": 2, "fsdp": 4}
  assert parse_mesh("fsdp:4", 4) == {"data": 1, "fsdp": 4}
  assert parse_mesh("data:-1,fsdp:2", 8) == {"data": 4, "fsdp": 2}
  for bad, message in [("data:3", "has 3 devices but the run has 4"), ("model:2", "unknown axis 'model'"),
                       ("data:2,data:2", "given twice"), ("data:x", "is not AXIS:SIZE"),
                       ("data:-1,fsdp:3", "do not divide"), ("data:-1,fsdp:-1", "at most one")]:
    with pytest.raises(ConfigError, match=message):
      parse_mesh(bad, 4)


def test_fsdp_splits_the_largest_divisible_dimension():
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from experiments.parallel import fsdp_spec  # pylint: disable=g-import-not-at-top
  assert fsdp_spec((40, 100), 2) == P(None, "fsdp")
  assert fsdp_spec((100, 40), 8) == P(None, "fsdp")  # 100 is not divisible by 8; 40 is
  assert fsdp_spec((100, 40), 2) == P("fsdp", None)
  assert fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
  assert fsdp_spec((1001, 3), 2) == P()  # no dimension divides
  assert fsdp_spec((100,), 2) == P()  # small: replicated
  assert fsdp_spec((4096, 4096), 1) == P()


def test_explicit_processes_need_all_three_flags():
  from experiments import distributed  # pylint: disable=g-import-not-at-top
  from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="go together"):
    distributed.initialize(coordinator_address="localhost:1234")
  with pytest.raises(ConfigError, match="must be in"):
    distributed.initialize("localhost:1234", num_processes=2, process_id=2)
  assert not distributed.initialize("localhost:1234", num_processes=1, process_id=0)
  assert not distributed.initialize()  # one process: nothing to connect
