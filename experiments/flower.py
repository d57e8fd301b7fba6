"""Our federated rounds as a Flower app (flwr >= 1.42, Message API): a real deployment path.

`experiments.federated` runs a round in one program (`round_step`). Here the same round is
split the way a deployment splits it, with Flower carrying the messages:

- `client_app` (one ClientApp process per message, started by a SuperNode): a "query"
  message asks which of our clients the node holds (`--node-config 'client-id=C'`); a
  "train" message carries the server's parameters (an ArrayRecord) and the round (a
  ConfigRecord), and the reply is the client's change (an ArrayRecord) with its size and
  loss (a MetricRecord): `federated.train_clients` of that one client, with the keys the
  simulation gives it (`federated.round_keys` of the round), so it trains as it does
  among the others.
- `server_app` (the ServerApp, started by the SuperLink for a run): finds the node of each
  client, then for each round samples the clients (`federated.sample`), sends each its
  message, waits for the replies and moves by `federated.server_update` (our aggregation
  and server optimizer, not a Flower strategy). The final parameters go to an .npz
  (`read_params` reads them back).

Both rebuild the run from its flag file (`--run-config 'flagfile="..."'`, e.g. a run's
workdir/flags.flags) with `experiments.train.prepare`: the same data, partition, model and
initial state as the simulation, so a federation of SuperNodes ends with the simulation's
parameters (tests/test_flower.py). Each process builds the run and compiles its program once
(`_client`, `_Server`); the Deployment Runtime starts a ClientApp process per message, so later
rounds load the client's program from JAX's persistent compilation cache. SCAFFOLD
(per-client control variates kept between rounds) is not carried.

The app's pyproject (components and run config) is experiments/flower_app; the commands:

    flower-superlink --insecure --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:8000 --port 9094 --node-config 'client-id=0'
    flower-supernode --insecure --superlink 127.0.0.1:8000 --port 9095 --node-config 'client-id=1'
    flwr run experiments/flower_app SUPERLINK --run-config 'flagfile="RUN.flags" params-out="OUT.npz"'

SUPERLINK names a connection in $FLWR_HOME/config.toml (`address = "127.0.0.1:8000"`,
`insecure = true`). In flwr 1.42 the SuperNodes reach the SuperLink's Fleet API, and `flwr run`
its Control API, over HTTP. The ClientApp and ServerApp processes import `experiments` from the
environment they start in (nothing is installed at run time); the ServerApp's progress lines
are in the run's log (`flwr log RUN_ID SUPERLINK`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import traceback
from typing import Any

import numpy as np

try:
  from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
  from flwr.clientapp import ClientApp
  from flwr.serverapp import Grid, ServerApp
except ImportError:
  raise ImportError("experiments.flower runs federated rounds on Flower, which is not installed: "
                    "pip install 'nets[flower]'") from None

CLIENT_KEY = "client-id"  # --node-config: the client a SuperNode holds
_POLL_S = 0.2  # between pulls of replies (Grid.send_and_receive waits 3 s)


def load_config(flagfile: str) -> Any:
  """The Config of a flag file (a run's workdir/flags.flags, or any file of flags)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  config_lib.define_flags(values)
  try:
    values(["flower", f"--flagfile={flagfile}"])
  except flags.Error as e:
    raise config_lib.ConfigError(f"{flagfile}: {e}") from None
  config = config_lib.from_flags(values)
  if not config.fed.on:
    raise config_lib.ConfigError(f"{flagfile}: not a federated run (--fed.clients=0)")
  if config.fed.algorithm == "scaffold":
    raise config_lib.ConfigError("--fed.algorithm=scaffold keeps control variates per client, which the Flower app "
                                 "does not carry: use fedavg or fedprox")
  return config


def _prepare(flagfile: str) -> tuple[Any, Any]:
  """(config, the run built by `train.prepare`) in this process, set up as a command would be
  (TensorFlow without Keras, XLA threads, the compilation cache). One dispatch per step: the
  steps are not run here, and counting their FLOPs to choose k would trace them for nothing."""
  from experiments import runtime  # pylint: disable=g-import-not-at-top
  from experiments.runtime import tf_import  # pylint: disable=g-import-not-at-top
  tf_import.without_keras()
  config = load_config(flagfile)
  runtime.before_jax(config)
  from experiments import train  # pylint: disable=g-import-not-at-top
  built = config.replace(runtime=dataclasses.replace(config.runtime, steps_per_dispatch=1))
  return config, train.prepare(built)


def names(tree: Any) -> list[str]:
  """Each leaf's path in `tree`, dotted ("Dense_0.kernel"): the arrays' names in messages and files."""
  import jax  # pylint: disable=g-import-not-at-top
  return [".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def to_record(tree: Any) -> ArrayRecord:
  """A pytree of arrays as an ArrayRecord of its named leaves."""
  import jax  # pylint: disable=g-import-not-at-top
  return ArrayRecord({n: Array(np.asarray(x)) for n, x in zip(names(tree), jax.tree.leaves(tree))})


def from_record(record: ArrayRecord, like: Any) -> Any:
  """The pytree of the structure of `like` held by `record` (`to_record`)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.unflatten(jax.tree.structure(like), [record[n].numpy() for n in names(like)])


def read_params(path: str) -> dict[str, np.ndarray]:
  """The final parameters the ServerApp wrote, by name (`names`)."""
  with np.load(path) as saved:
    return {k: saved[k] for k in saved.files}


# The ClientApp.


class _Client:
  """One node's side of the rounds: the run rebuilt from its flag file, with the local
  training of one client compiled once for the process."""

  def __init__(self, flagfile: str):
    import jax  # pylint: disable=g-import-not-at-top
    from experiments import federated  # pylint: disable=g-import-not-at-top
    self.config, run = _prepare(flagfile)
    resident = run.feed.resident
    self.examples = jax.device_put({k: v for k, v in resident.items() if k not in ("client_index", "client_size")})
    self.index, self.sizes = resident["client_index"], resident["client_size"]
    self.like, self.model_state = run.state.params, run.state.model_state
    self.step_key = jax.random.split(jax.random.key(self.config.seed), 3)[1]  # as train.prepare's
    built = run.built
    self._train = jax.jit(functools.partial(federated.train_clients, self.config, built.model, built.objective,
                                            built.call))
    self._keys = jax.jit(federated.round_keys)

  def train(self, params: Any, client: int, round_: int) -> tuple[Any, float, int]:
    """Client `client`'s change from `params` in round `round_`, its mean loss and size."""
    import jax  # pylint: disable=g-import-not-at-top
    client_rng, _ = self._keys(self.step_key, np.int32(round_))
    ids = np.array([client], np.int32)
    result = self._train(params, self.model_state, self.examples, self.index[ids], self.sizes[ids], ids, client_rng)
    delta = jax.tree.map(lambda d: np.asarray(d[0]), result.delta)
    return delta, float(result.loss[0]), int(self.sizes[client])


@functools.lru_cache(maxsize=None)
def _client(flagfile: str) -> _Client:
  return _Client(flagfile)


def _client_id(context: Context) -> int:
  """The client a node holds: its --node-config client-id, or under Flower's simulation runtime
  the partition-id it gives each virtual SuperNode."""
  for key in (CLIENT_KEY, "partition-id"):
    if key in context.node_config:
      return int(context.node_config[key])
  raise ValueError(f"this SuperNode holds no client: start it with --node-config '{CLIENT_KEY}=C'")


client_app = ClientApp()


@client_app.query()
def identify(msg: Message, context: Context) -> Message:
  """Which client this node holds (light: nothing is built)."""
  return Message(RecordDict({"node": ConfigRecord({"client": _client_id(context)})}), reply_to=msg)


@client_app.train()
def train_round(msg: Message, context: Context) -> Message:
  """One round of this node's client from the server's parameters."""
  client = _client_id(context)
  asked = msg.content["config"]
  if int(asked["client"]) != client:
    raise ValueError(f"a message for client {asked['client']} reached the node of client {client}")
  node = _client(str(context.run_config.get("flagfile") or asked["flagfile"]))
  params = from_record(msg.content["arrays"], node.like)
  delta, loss, size = node.train(params, client, int(asked["round"]))
  return Message(RecordDict({"arrays": to_record(delta),
                             "metrics": MetricRecord({"client": client, "size": size, "loss": loss})}),
                 reply_to=msg)


# The ServerApp.


class _Server:
  """The server's side: the run's initial state and optimizer, its update compiled once."""

  def __init__(self, flagfile: str):
    import jax  # pylint: disable=g-import-not-at-top
    from experiments import federated  # pylint: disable=g-import-not-at-top
    self.config, run = _prepare(flagfile)
    self.params, self.opt_state = run.state.params, run.state.opt_state
    self.step_key = jax.random.split(jax.random.key(self.config.seed), 3)[1]
    self._update = jax.jit(functools.partial(federated.server_update, self.config, run.built.tx))
    self._keys = jax.jit(federated.round_keys)

  def update(self, round_: int, deltas: list[Any], sizes: list[int]) -> None:
    """The server's move on the changes of the round's clients (in `sample`'s order)."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    _, noise_key = self._keys(self.step_key, np.int32(round_))
    stacked = jax.tree.map(lambda *d: jnp.stack(d), *deltas)
    self.params, self.opt_state, _ = self._update(self.params, self.opt_state, stacked,
                                                  jnp.asarray(sizes, jnp.int32), noise_key)


def _pull(grid: Grid, asked: list[str], deadline: float, what: str, poll_s: float = _POLL_S) -> list[Message]:
  """The replies to the messages `asked` (their ids), in that order, waiting until `deadline`
  and pulling every `poll_s` seconds."""
  pending, got = set(asked), {}
  while pending:
    for reply in grid.pull_messages(pending):
      to = reply.metadata.reply_to_message_id
      if reply.has_error():
        raise RuntimeError(f"{what}: node {reply.metadata.src_node_id} failed: {reply.error.reason}")
      got[to] = reply
      pending.discard(to)
    if pending and time.time() > deadline:
      raise TimeoutError(f"{what}: no reply from {len(pending)} node(s) in time")
    if pending:
      time.sleep(poll_s)
  return [got[i] for i in asked]


def _ask_nodes(grid: Grid, clients: int, deadline: float) -> list[str]:
  """Waits for `clients` SuperNodes to connect and asks each which client it holds (the ids
  of the messages, for `_holders`)."""
  while len(nodes := list(grid.get_node_ids())) < clients:
    if time.time() > deadline:
      raise TimeoutError(f"{len(nodes)} SuperNode(s) connected; the run has {clients} clients")
    time.sleep(_POLL_S)
  return list(grid.push_messages([Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                                  for n in nodes]))


def _holders(grid: Grid, asked: list[str], clients: int, deadline: float) -> dict[int, int]:
  """{client: the node that holds it}, from the nodes' replies to `_ask_nodes`."""
  holders: dict[int, int] = {}
  for reply in _pull(grid, asked, deadline, "asking the nodes for their clients"):
    client, node = int(reply.content["node"]["client"]), reply.metadata.src_node_id
    if client in holders:
      raise ValueError(f"nodes {holders[client]} and {node} both hold client {client}")
    holders[client] = node
  missing = sorted(set(range(clients)) - set(holders))
  if missing:
    raise ValueError(f"no SuperNode holds client(s) {missing} (--node-config '{CLIENT_KEY}=C')")
  return holders


def serve(grid: Grid, flagfile: str, out: str, timeout: float, poll_s: float = _POLL_S) -> list[float]:
  """The run's rounds over `grid`; writes the final parameters to `out` (.npz) and returns each
  round's seconds (from sending its messages to the server's move). Replies are pulled every
  `poll_s` seconds."""
  if not out:
    raise ValueError("--run-config params-out: where to write the final parameters (.npz) is not set")
  config = load_config(flagfile)
  asked = _ask_nodes(grid, config.fed.clients, time.time() + timeout)
  server = _Server(flagfile)  # (while the nodes answer)
  holders = _holders(grid, asked, config.fed.clients, time.time() + timeout)
  import jax  # pylint: disable=g-import-not-at-top  (after _Server: it sets the process up first)
  from experiments import federated  # pylint: disable=g-import-not-at-top
  seconds = []
  for round_ in range(config.steps):
    ids = [int(c) for c in federated.sample(config, round_)]
    params = to_record(server.params)
    started = time.perf_counter()
    asks = [Message(RecordDict({"arrays": params, "config": ConfigRecord({"round": round_, "client": c,
                                                                          "flagfile": flagfile})}),
                    dst_node_id=holders[c], message_type=MessageType.TRAIN, group_id=str(round_)) for c in ids]
    replies = _pull(grid, list(grid.push_messages(asks)), time.time() + timeout, f"round {round_}", poll_s)
    by_client = {int(r.content["metrics"]["client"]): r for r in replies}
    replies = [by_client[c] for c in ids]  # aggregated in the order the simulation stacks them
    deltas = [from_record(r.content["arrays"], server.params) for r in replies]
    metrics = [r.content["metrics"] for r in replies]
    sizes = [int(m["size"]) for m in metrics]
    server.update(round_, deltas, sizes)
    loss = sum(float(m["loss"]) * s for m, s in zip(metrics, sizes)) / sum(sizes)
    seconds.append(time.perf_counter() - started)
    print(f"Flower round {round_ + 1}/{config.steps}: clients {ids}, train/loss {loss:.6g}, {seconds[-1]:.2f} s",
          flush=True)
  tmp = f"{out}.tmp.npz"
  np.savez(tmp, **{n: np.asarray(x) for n, x in zip(names(server.params), jax.tree.leaves(server.params))})
  os.replace(tmp, out)  # whole, or not at all
  return seconds


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
  """The ServerApp: run config `flagfile` (the run), `params-out` (.npz of the final
  parameters; a failure writes `params-out`.error) and `round-timeout` (seconds)."""
  run_config = context.run_config
  out = str(run_config["params-out"])
  try:
    serve(grid, str(run_config["flagfile"]), out, float(run_config["round-timeout"]))
  except BaseException:
    if out:
      with open(f"{out}.error", "w", encoding="utf-8") as f:
        f.write(traceback.format_exc())
    raise
