"""Federated learning through the training spine: `--fed.*` turns a run's steps into rounds.

A federated run is an ordinary run (`experiments.train`) whose training examples are split
among `--fed.clients` clients and whose step is a round (`round_step`):

1. the round's clients are drawn on the host from (seed, round) (`ClientFeed.items`): a
   resumed run draws what an uninterrupted one would, and the client axis is split over the
   devices of the mesh like a batch;
2. each sampled client trains from the server's parameters on its own examples: E local
   epochs of batches of B, in an order drawn from (seed, round, client), as one `vmap` over
   clients of a `lax.while_loop` over local steps (`nets.federated.run_clients`), which stops
   with the busiest sampled client: clients of unequal size are padded to the largest, and a
   client's padded steps change nothing;
3. the server averages the changes (weighted by client size, or clipped and noised for
   DP-FedAvg) and moves by the run's Optax optimizer (`nets.federated.server_step`).

Everything else is the spine's: `--steps` counts rounds, and logs, evaluations, checkpoints
(SCAFFOLD's control variates are part of the state), resume, SIGTERM and TensorBoard work as
they do for any run. The partition is drawn from the seed, summarised in
`workdir/partition.json` and drawn in `workdir/partition.png`. `privacy_spent` reports
DP-FedAvg's epsilon with Google's `dp-accounting`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import data, partitions
from experiments import feed as feed_lib
from experiments.config import Config, ConfigError
from nets import federated as fed_lib
from nets.apply import Apply

_SAMPLER_STREAM = 0xFED  # names the stream of each round's clients in the seed


@dataclasses.dataclass
class Clients:
  """Which examples each client holds: `parts[c]` indexes `examples` (every array's first axis)."""

  examples: dict[str, np.ndarray]
  parts: list[np.ndarray]
  labels: np.ndarray | None = None  # class labels, for the partition's summary
  names: list[str] | None = None  # speaking roles

  def summary(self) -> dict[str, Any]:
    out = partitions.summary(self.parts, self.labels)
    if self.names:
      out["roles"] = {n: int(len(p)) for n, p in zip(self.names, self.parts)}
    return out


def _roles(config: Config, source: data.Source) -> Clients:
  """The speaking roles of the training text that say most, each one's lines cut into windows of
  --block_size + 1 characters (a window's inputs and next characters)."""
  text = source.tokenizer.decode(source.text.tokens[config.train_split])
  width = config.block_size + 1
  roles = {name: said for name, said in partitions.speaking_roles(text).items() if len(said) >= width}
  if len(roles) < config.fed.clients:
    raise ConfigError(f"--fed.clients={config.fed.clients}: the training text has {len(roles)} speaking roles with "
                      f"at least --block_size + 1 = {width} characters")
  chosen = sorted(roles, key=lambda n: -len(roles[n]))[:config.fed.clients]
  windows, parts, start = [], [], 0
  for name in chosen:
    tokens = np.asarray(source.tokenizer.encode(roles[name]), np.int32)
    count = (len(tokens) - 1) // config.block_size
    index = np.arange(count)[:, None] * config.block_size + np.arange(width)
    windows.append(tokens[index])
    parts.append(np.arange(start, start + count))
    start += count
  tokens = np.concatenate(windows)
  return Clients({"x": tokens[:, :-1], "y": tokens[:, 1:]}, parts, names=chosen)


def clients(config: Config, source: data.Source) -> Clients:
  """The run's clients: its training examples partitioned by --fed.partition (seeded by
  --seed), or the speaking roles of a text."""
  f = config.fed
  if f.partition == "roles":
    return _roles(config, source)
  if source.windows is not None:
    raise ConfigError(f"--fed.partition={f.partition} splits labelled examples; --dataset={config.dataset} is a "
                      "text or audio stream")
  examples = data.read_training(config, source.builder)
  labels = examples.get("y") if source.num_classes else None
  n = len(next(iter(examples.values())))
  try:
    if f.partition == "iid":
      parts = partitions.iid(n, f.clients, config.seed)
    elif f.partition == "quantity_skew":
      parts = partitions.quantity_skew(n, f.clients, config.seed, sigma=f.sigma)
    elif labels is None:
      raise ConfigError(f"--fed.partition={f.partition} splits by class; --dataset={config.dataset} has no labels")
    elif f.partition == "shards":
      parts = partitions.shards(labels, f.clients, config.seed, f.shards_per_client)
    else:
      parts = partitions.dirichlet(labels, f.clients, f.alpha, config.seed)
  except ValueError as e:
    raise ConfigError(f"--fed.partition={f.partition}: {e}") from None
  return Clients(examples, parts, labels)


def write_partition(workdir: Any, config: Config, clients_: Clients) -> dict[str, Any]:
  """workdir/partition.json (the summary and every client's example indices) and partition.png."""
  summary = clients_.summary()
  record = {"partition": config.fed.partition, "seed": config.seed, **summary,
            "clients_examples": [p.tolist() for p in clients_.parts]}
  (workdir / "partition.json").write_text(json.dumps(record))
  partitions.histogram(str(workdir / "partition.png"), clients_.parts, clients_.labels,
                       f"{config.fed.partition}: {summary['clients']} clients, {summary['examples']} examples")
  return summary


def sample(config: Config, round_: int) -> np.ndarray:
  """The clients of round `round_`: a function of (seed, round) only."""
  rng = np.random.default_rng([config.seed, _SAMPLER_STREAM, round_])
  return np.sort(rng.choice(config.fed.clients, config.fed.clients_per_round, replace=False)).astype(np.int32)


class ClientFeed(feed_lib.Feed):
  """Every client's examples held on the devices; a round's item is its sampled clients."""

  kind = "held on the devices, by client"

  def __init__(self, config: Config, clients_: Clients):
    self.config = config
    sizes = np.array([len(p) for p in clients_.parts], np.int32)
    index = np.zeros((len(sizes), sizes.max()), np.int32)
    for c, part in enumerate(clients_.parts):
      index[c, :len(part)] = part
    self.resident = {**clients_.examples, "client_index": index, "client_size": sizes}

  def items(self, step: int, k: int) -> feed_lib.Items:
    rows = data.per_process(self.config.fed.clients_per_round)
    first = jax.process_index() * rows
    return {"client": np.stack([sample(self.config, r)[first:first + rows] for r in range(step, step + k)])}

  def zeros(self) -> feed_lib.Items:
    return {"client": np.zeros((1, data.per_process(self.config.fed.clients_per_round)), np.int32)}

  def take(self, resident, item):
    return {**resident, "client": item["client"]}


def local_batches(key: jax.Array, index: jax.Array, size: jax.Array, *, epochs: int, batch: int):
  """One client's local batches: `epochs` passes over its `size` examples (the first `size`
  entries of `index`), each in its own random order, in batches of `batch`; every client gets
  the same number of steps, ceil(largest client / batch) per epoch. Returns the example
  indices [steps, batch], their mask [steps, batch] (false: padding) and which steps are
  real [steps]."""
  slots = index.shape[0]
  per_epoch = -(-slots // batch)
  position = jnp.arange(per_epoch * batch)

  def epoch(e):
    score = jnp.where(jnp.arange(slots) < size, jax.random.uniform(jax.random.fold_in(key, e), (slots,)), 2.0)
    order = jnp.pad(jnp.argsort(score), (0, per_epoch * batch - slots))  # this epoch's examples first
    return (index[order].reshape(per_epoch, batch), (position < size).reshape(per_epoch, batch),
            jnp.arange(per_epoch) * batch < size)

  rows, mask, active = jax.vmap(epoch)(jnp.arange(epochs))
  return rows.reshape(-1, batch), mask.reshape(-1, batch), active.reshape(-1)


def round_keys(rng: jax.Array, round_: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The keys of round `round_` of a run whose step key is `rng`: the clients' (each folds in
  its id) and the server's noise."""
  client_rng, noise_key = jax.random.split(jax.random.fold_in(rng, round_))
  return client_rng, noise_key


def train_clients(config: Config, model: Any, objective: Any, call: Any, params: Any, model_state: Any,
                  examples: dict[str, jax.Array], index: jax.Array, sizes: jax.Array, ids: jax.Array,
                  client_rng: jax.Array, server_control: Any = None,
                  controls: Any = None) -> fed_lib.ClientResult:
  """The local training of clients `ids` [m] (their example indices `index` [m, slots] into
  `examples`, and `sizes` [m]) from the server's `params`: one `vmap` over the clients of a
  `lax.while_loop` over their steps. Each client's batches and randomness come from
  fold_in(client_rng, its id) alone, so one client trained anywhere (a Flower client) trains as
  it does among the others. SCAFFOLD takes the server's and these clients' control variates."""
  f = config.fed
  local_batch = f.local_batch_size or index.shape[1]
  keys = jax.vmap(lambda c: jax.random.fold_in(client_rng, c))(ids)
  order_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  rows, mask, active = jax.vmap(lambda k, i, s: local_batches(k, i, s, epochs=f.local_epochs, batch=local_batch))(
      order_keys, index, sizes)

  def loss_fn(params, b, key):
    model_key, objective_key = jax.random.split(key)
    taken = {name: value[b["rows"]] for name, value in examples.items()}
    apply = Apply(model, params, model_state, model_key, train=True, call=call)
    per_example = objective(apply, taken, objective_key)["loss"]
    per_example = per_example.reshape(per_example.shape[0], -1).mean(-1)
    return jnp.sum(per_example * b["mask"]) / jnp.maximum(b["mask"].sum(), 1)

  return fed_lib.run_clients(loss_fn, params, {"rows": rows, "mask": mask.astype(jnp.float32)}, active, train_keys,
                             lr=f.local_learning_rate, mu=f.prox_mu if f.algorithm == "fedprox" else 0.0,
                             server_control=server_control, client_controls=controls)


def server_update(config: Config, tx: optax.GradientTransformation, params: Any, opt_state: Any,
                  deltas: Any, sizes: jax.Array, noise_key: jax.Array) -> tuple[Any, Any, Any]:
  """The server's move on the clients' changes `deltas` [m, ...]: their average (by size, or
  clipped and noised) and the optimizer's step. Returns (params, opt_state, average)."""
  f = config.fed
  average = fed_lib.aggregate(deltas, sizes.astype(jnp.float32), clip_norm=f.clip_norm or None,
                              noise_multiplier=f.noise_multiplier, key=noise_key)
  params, opt_state = fed_lib.server_step(tx, params, opt_state, average)
  return params, opt_state, average


def round_step(state: Any, batch: dict[str, jax.Array], rng: jax.Array, *, model: Any, objective: Any,
               tx: optax.GradientTransformation, schedule: Any, call: Any, config: Config,
               axis_name: str | None = None) -> tuple[Any, dict[str, jax.Array]]:
  """One round (module docstring), in the place of `experiments.train.train_step`: `batch`
  holds every client's examples and this round's sampled clients ("client")."""
  if axis_name is not None:
    raise ValueError("federated rounds run under jit over a mesh, not pmap")
  f = config.fed
  client_rng, noise_key = round_keys(rng, state.step)
  ids = batch["client"]
  examples = {k: v for k, v in batch.items() if k not in ("client", "client_index", "client_size")}
  index, sizes = batch["client_index"][ids], batch["client_size"][ids]
  scaffold = f.algorithm == "scaffold"
  controls = jax.tree.map(lambda c: c[ids], state.fed["client_controls"]) if scaffold else None
  result = train_clients(config, model, objective, call, state.params, state.model_state, examples, index, sizes,
                         ids, client_rng, state.fed["server_control"] if scaffold else None, controls)
  params, opt_state, average = server_update(config, tx, state.params, state.opt_state, result.delta, sizes,
                                             noise_key)
  fed_state = state.fed
  if scaffold:
    fed_state = {"server_control": fed_lib.scaffold_server_control(state.fed["server_control"], controls,
                                                                     result.control, f.clients),
                 "client_controls": jax.tree.map(lambda all_, new: all_.at[ids].set(new),
                                                 state.fed["client_controls"], result.control)}
  weights = sizes.astype(jnp.float32)
  metrics = {"train/loss": jnp.sum(result.loss * weights) / weights.sum(),
             "train/update_norm": optax.global_norm(average),
             "train/client_update_norm": jnp.mean(jax.vmap(optax.global_norm)(result.delta)),
             "train/param_norm": optax.global_norm(params),
             "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, fed=fed_state), metrics


def check_devices(config: Config, par: Any) -> None:
  """The devices can share the sampled clients (one line, before any data is read)."""
  if par.sizes["fsdp"] > 1:
    raise ConfigError("--fed.clients splits clients over the devices, not parameters: drop fsdp from "
                      "--parallel.mesh")
  if config.fed.clients_per_round % par.num_devices:
    raise ConfigError(f"--fed.clients_per_round={config.fed.clients_per_round} is not divisible by the "
                      f"{par.num_devices} devices the clients are split over")


def check_model(config: Config, state: Any) -> None:
  """The model has nothing but parameters to average (one line, before the first round)."""
  if jax.tree.leaves(state.model_state):
    raise ConfigError(f"--fed.clients: --model={config.model} keeps variables besides its parameters ("
                      f"{', '.join(state.model_state)}, e.g. batch statistics), which federated averaging does "
                      "not average; choose a model without batch normalisation")


def describe(config: Config, clients_: Clients, workdir: Any = None) -> str:
  """One line on the partition and the rounds; with `workdir`, the partition is written there."""
  summary = write_partition(workdir, config, clients_) if workdir is not None else clients_.summary()
  f = config.fed
  skew = (f", {summary['classes_per_client_mean']:.1f} classes per client" if "classes_per_client_mean" in summary
          else "")
  local = f"B={f.local_batch_size}" if f.local_batch_size else "B=all"
  dp = f", clip {f.clip_norm:g}, noise x{f.noise_multiplier:g}" if f.clip_norm else ""
  return (f"Federated: {f.partition} partition of {summary['examples']:,} examples among {summary['clients']} "
          f"clients (sizes {summary['size_min']}..{summary['size_max']}{skew}); {f.clients_per_round} per round, "
          f"{f.algorithm}, E={f.local_epochs}, {local}, local lr {f.local_learning_rate:g}{dp}; server "
          f"{config.optimizer} at {config.learning_rate:g}")


_RDP_ORDERS = tuple(range(2, 257))


@functools.lru_cache(maxsize=8)
def _one_round(sampling: float, noise_multiplier: float) -> Any:
  """dp-accounting's Renyi-DP accountant after one round (computing it takes ~0.3 s)."""
  try:
    import dp_accounting  # pylint: disable=g-import-not-at-top
    from dp_accounting import rdp  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("--fed.noise_multiplier reports the privacy spent with dp-accounting: pip install "
                      "'nets[privacy]'") from None
  accountant = rdp.RdpAccountant(orders=list(_RDP_ORDERS))
  accountant.compose(dp_accounting.PoissonSampledDpEvent(sampling, dp_accounting.GaussianDpEvent(noise_multiplier)))
  return accountant


def privacy_spent(config: Config, rounds: int) -> float | None:
  """DP-FedAvg's epsilon at --fed.dp_delta after `rounds` rounds (None without noise), from
  dp-accounting's Renyi-DP accountant: each round a Gaussian mechanism of noise multiplier
  --fed.noise_multiplier on the sum of clipped updates, with each client taking part with
  probability clients_per_round / clients (Poisson sampling, as McMahan et al. 2018 account
  for their rounds). Renyi DP adds up over rounds, so one round's is computed once and scaled
  (the accountant composing `rounds` of them says the same, at ~0.3 s an evaluation)."""
  f = config.fed
  if not f.noise_multiplier or not rounds:
    return None
  one = _one_round(f.clients_per_round / f.clients, f.noise_multiplier)
  from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
  per_round = getattr(one, "_rdp", None)  # (the accountant's Renyi DP at each order, if it keeps it there)
  if per_round is None:
    import copy  # pylint: disable=g-import-not-at-top
    import dp_accounting  # pylint: disable=g-import-not-at-top
    accountant = copy.deepcopy(one)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(
        f.clients_per_round / f.clients, dp_accounting.GaussianDpEvent(f.noise_multiplier)), rounds - 1)
    return float(accountant.get_epsilon(f.delta))
  return float(rdp_privacy_accountant.compute_epsilon(_RDP_ORDERS, rounds * np.asarray(per_round), f.delta)[0])
