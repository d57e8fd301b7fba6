"""Our federated rounds on a real Flower federation (experiments/flower.py) over loopback: a
SuperLink and one SuperNode per client, each its own process, the run submitted with `flwr
run`; the parameters it ends with are the in-process simulation's."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest

pytest.importorskip("flwr")

from conftest import ROOT  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import checkpoint, flower, train  # pylint: disable=wrong-import-position
from experiments import config as config_lib  # pylint: disable=wrong-import-position
from experiments.config import Config, Fed  # pylint: disable=wrong-import-position

BIN = os.path.dirname(sys.executable)  # flower-superlink, flower-supernode, flwr and what they start
APP = os.path.join(ROOT, "experiments", "flower_app")
MARK = "NETS_FLOWER_TEST"  # in the environment of every process the test starts, and of theirs


def _free_ports(n: int) -> list[int]:
  """n distinct free TCP ports on 127.0.0.1."""
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _listening(port: int) -> bool:
  with socket.socket() as s:
    s.settimeout(0.2)
    return s.connect_ex(("127.0.0.1", port)) == 0


class _Processes:
  """The processes of one test, and every process they start: the SuperLink and SuperNodes
  start SuperExecs (some in sessions of their own), which start a ServerApp and ClientApp
  processes. All inherit MARK=<this test's token>, so `stop` finds each of them by its
  environment (orphans too) and ends it by its pid."""

  def __init__(self, env: dict[str, str], logs):
    self.token = uuid.uuid4().hex
    self.env = {**env, MARK: self.token}
    self.logs = logs
    self.started: dict[str, subprocess.Popen] = {}
    self.servers: set[str] = set()

  def start(self, name: str, *args: str, server: bool = True) -> subprocess.Popen:
    """Starts `args` (its output to logs/NAME.log); a server is expected to run until `stop`."""
    with open(self.logs / f"{name}.log", "wb") as log:
      proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT)
    self.started[name] = proc
    if server:
      self.servers.add(name)
    return proc

  def check_alive(self) -> None:
    for name, proc in self.started.items():
      if name in self.servers and proc.poll() is not None:
        raise AssertionError(f"{name} exited with {proc.returncode}\n{self.tails()}")

  def tails(self, chars: int = 3000) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-chars:]}"
                     for p in sorted(self.logs.glob("*.log")))

  def _marked(self) -> set[int]:
    found = set()
    mark = f"{MARK}={self.token}".encode()
    for entry in os.listdir("/proc"):
      if entry.isdigit() and int(entry) != os.getpid():
        try:
          with open(f"/proc/{entry}/environ", "rb") as f:
            if mark in f.read().split(b"\0"):
              found.add(int(entry))
        except OSError:  # gone, or not ours
          pass
    return found

  def stop(self, grace_s: float = 5.0) -> None:
    """SIGTERM to each (Flower's processes shut down on it), SIGKILL to any left after
    `grace_s`; repeated until none is left, since a SuperExec may start one meanwhile."""
    deadline = time.monotonic() + grace_s
    while True:
      pids = self._marked() | {p.pid for p in self.started.values() if p.poll() is None}
      if not pids:
        break
      sig = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
      for pid in pids:
        try:
          os.kill(pid, sig)
        except ProcessLookupError:
          pass
      time.sleep(0.2)
      for proc in self.started.values():
        proc.poll()  # reap ours
    for proc in self.started.values():
      proc.wait()


def test_flower_federation_matches_the_simulation(tmp_path):
  """Two clients, both sampled each round, two rounds of FedAvg: the SuperLink's ServerApp
  (our sampling and `server_update`) and each SuperNode's ClientApp (one client's
  `train_clients`), messages over HTTP on 127.0.0.1, end where `train.train_and_evaluate`
  does."""
  # Unequal clients (31 and 169 examples at seed 3): the padded local steps and the average by size count.
  fed = Fed(clients=2, clients_per_round=2, partition="quantity_skew", local_epochs=1, local_batch_size=10,
            local_learning_rate=0.1)
  config = Config(model="mlp", model_hparams={"features": (16,)}, train_examples=200, steps=2, log_every=1,
                  eval_every=0, checkpoint_every=0, optimizer="sgd", learning_rate=1.0, seed=3, fed=fed)
  flagfile, out = tmp_path / "run.flags", tmp_path / "flower_params.npz"
  flagfile.write_text(config_lib.to_flagfile(config))
  home, logs = tmp_path / "flwr-home", tmp_path / "logs"
  home.mkdir()
  logs.mkdir()
  link, *node_ports = _free_ports(1 + fed.clients)
  (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                    f'address = "127.0.0.1:{link}"\ninsecure = true\n')
  env = {**os.environ,
         "FLWR_HOME": str(home),  # the CLI's config, and where the nodes install the app (no ~/.flwr)
         "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",  # nothing off this machine
         "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",  # start app processes sooner than every 1 s
         "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
         "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
  procs = _Processes(env, logs)
  start = time.monotonic()
  try:
    procs.start("superlink", f"{BIN}/flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
                "--disable-runtime-dependency-installation")
    for c, port in enumerate(node_ports):
      procs.start(f"supernode{c}", f"{BIN}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--host", "127.0.0.1", "--port", str(port), "--node-config", f"{flower.CLIENT_KEY}={c}")
    while not _listening(link):
      procs.check_alive()
      assert time.monotonic() - start < 60, f"the SuperLink did not listen on {link}\n{procs.tails()}"
      time.sleep(0.1)
    submit = procs.start("flwr-run", f"{BIN}/flwr", "run", APP, "loopback", "--run-config", f'flagfile="{flagfile}"',
                         "--run-config", f'params-out="{out}"', "--run-config", "round-timeout=120.0", server=False)

    # The simulation, in this process, while the federation runs.
    train.train_and_evaluate(config, tmp_path / "sim")
    restored = checkpoint.Checkpoints(tmp_path / "sim/checkpoints").restore_raw()["params"]
    simulated = dict(zip(flower.names(restored), map(np.asarray, jax.tree.leaves(restored))))

    error = tmp_path / "flower_params.npz.error"
    while not out.exists():
      assert not error.exists(), f"the ServerApp failed:\n{error.read_text()}\n{procs.tails()}"
      assert submit.poll() in (None, 0), f"flwr run failed\n{procs.tails()}"
      procs.check_alive()
      assert time.monotonic() - start < 300, f"no parameters from the federation\n{procs.tails()}"
      time.sleep(0.2)
  finally:
    procs.stop()

  assert not procs._marked()  # pylint: disable=protected-access  (every process is gone)
  rounds = [json.loads(line) for line in (tmp_path / "sim/metrics.jsonl").read_text().splitlines()]
  assert all(r["train/update_norm"] > 0.1 for r in rounds if "train/update_norm" in r)  # the server moved
  federated = flower.read_params(str(out))
  assert sorted(federated) == sorted(simulated)
  print(f"max |federation - simulation| = {max(np.abs(federated[k] - simulated[k]).max() for k in simulated):.3g}; "
        f"{time.monotonic() - start:.1f} s")
  for name, value in simulated.items():
    np.testing.assert_allclose(federated[name], value, atol=1e-5, err_msg=name)
