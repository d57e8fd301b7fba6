"""Federated simulation speed: client updates per second, all sampled clients at once against a loop.

    python -m experiments.bench.federated [--clients=100] [--per_round=10,100] [--rounds=5]

The MNIST-1D paper CNN and its classification objective, the published 4,000 training
examples cut IID into `--clients` clients (40 each at 100), E = 1 local epoch of batches of
B = 10 (4 local SGD steps). Two ways to run a round, alternating, each a jitted program:

- `vmap`: `nets.federated.run_clients`, every sampled client's local steps as one `vmap` over
  clients of a `lax.scan` over steps, then the weighted average and the server step;
- `loop`: what a naive simulator does: a Python loop over the sampled clients, each calling
  the same jitted local update, then the same aggregation.

Both start from the same parameters with the same clients and give the same model (checked).
It prints one JSON line per measurement and a summary of the ratio (client updates per second).
"""

from __future__ import annotations

import json
import statistics
import time

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_integer("clients", 100, "Clients the 4,000 examples are cut into (IID).", lower_bound=1)
  flags.DEFINE_list("per_round", ["10", "100"], "Clients sampled per round (each value measured).")
  flags.DEFINE_integer("batch", 10, "Local batch size B.", lower_bound=1)
  flags.DEFINE_integer("rounds", 5, "Alternating rounds of measurement.", lower_bound=1)
  flags.DEFINE_integer("repeats", 5, "Federated rounds timed per measurement (the median is taken).", lower_bound=1)
  flags.DEFINE_float("lr", 0.05, "Client learning rate.")
  flags.DEFINE_boolean("runtime_rules", True, "Compute the model as the spine does on this platform "
                       "(experiments.runtime's rewrite rules); off: plain model.apply.")


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import nets  # pylint: disable=g-import-not-at-top
  from experiments import data, partitions  # pylint: disable=g-import-not-at-top
  from experiments.config import Config  # pylint: disable=g-import-not-at-top
  from nets import federated as fed  # pylint: disable=g-import-not-at-top
  from nets.apply import Apply  # pylint: disable=g-import-not-at-top
  from experiments.runtime import rewrite  # pylint: disable=g-import-not-at-top

  config = Config(dataset="mnist1d")
  train = data.read_split(data.builder(config), "train")
  x, y = np.asarray(train["x"], np.float32), np.asarray(train["y"], np.int32)
  parts = partitions.iid(len(x), FLAGS.clients, seed=0)
  steps = max(-(-len(p) // FLAGS.batch) for p in parts)

  def client_arrays(p):  # [steps, B, ...], padded rows masked, padded steps inactive
    rows = steps * FLAGS.batch
    pad = rows - len(p)
    xs = np.concatenate([x[p], np.zeros((pad,) + x.shape[1:], np.float32)]).reshape(steps, FLAGS.batch, -1)
    ys = np.concatenate([y[p], np.zeros(pad, np.int32)]).reshape(steps, FLAGS.batch)
    mask = np.concatenate([np.ones(len(p)), np.zeros(pad)]).reshape(steps, FLAGS.batch).astype(np.float32)
    return xs, ys, mask, mask.any(1)

  arrays = [np.stack(a) for a in zip(*map(client_arrays, parts))]
  all_x, all_y, all_mask, all_active = (jnp.asarray(a) for a in arrays)
  sizes = jnp.asarray([len(p) for p in parts], jnp.float32)

  model = nets.create("cnn", features=(25, 25, 25), kernel_size=(5, 3, 3), strides=(2, 2, 2), padding="1",
                      weight_init="torch")
  objective = nets.objectives.create("classification")
  params = model.init(jax.random.key(0), all_x[0, 0])["params"]

  # The model computed as the training spine computes it on this platform (build.model_call:
  # on the CPU, convolutions as matrix products, which XLA runs fast inside loops too).
  call = rewrite.rewrite(model.apply, runtime.rules(jax.devices()[0].platform, "float32")) if FLAGS.runtime_rules \
      else model.apply

  def loss_fn(p, batch, key):
    out = objective(Apply(model, p, {}, key, train=True, call=call), batch, key)
    return (out["loss"] * batch["mask"]).sum() / jnp.maximum(batch["mask"].sum(), 1)

  tx = optax.sgd(1.0)

  def gather(idx):
    return {"x": all_x[idx], "y": all_y[idx], "mask": all_mask[idx]}, all_active[idx], sizes[idx]

  @jax.jit
  def local(p, batches, active, key):
    return jax.tree.map(jnp.subtract, fed.client_update(loss_fn, p, batches, active, key, lr=FLAGS.lr), p)

  @jax.jit
  def finish(p, opt_state, deltas, weights):
    return fed.server_step(tx, p, opt_state, fed.aggregate(deltas, weights))

  def make(per_round):
    """The two ways to run a round of `per_round` clients."""

    @jax.jit
    def vmap_round(p, opt_state, key):
      idx = fed.sample_clients(key, FLAGS.clients, per_round)
      batches, active, weights = gather(idx)
      result = fed.run_clients(loss_fn, p, batches, active, jax.random.split(key, per_round), lr=FLAGS.lr)
      return fed.server_step(tx, p, opt_state, fed.aggregate(result.delta, weights))

    sample = jax.jit(lambda key: fed.sample_clients(key, FLAGS.clients, per_round))

    def loop_round(p, opt_state, key):
      idx = sample(key)
      batches, active, weights = gather(idx)
      keys = jax.random.split(key, per_round)
      deltas = [local(p, jax.tree.map(lambda a, i=i: a[i], batches), active[i], keys[i]) for i in range(per_round)]
      return finish(p, opt_state, jax.tree.map(lambda *d: jnp.stack(d), *deltas), weights)

    return {"vmap": vmap_round, "loop": loop_round}

  summary = {}
  for per_round in (int(v) for v in FLAGS.per_round):
    ways = make(per_round)
    key = jax.random.key(1)
    first = {name: jax.block_until_ready(way(params, tx.init(params), key)) for name, way in ways.items()}
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(first["vmap"][0]),
                                                           jax.tree.leaves(first["loop"][0])))
    rates = {name: [] for name in ways}
    for r in range(FLAGS.rounds):
      for name in (("vmap", "loop") if r % 2 == 0 else ("loop", "vmap")):
        p, s = params, tx.init(params)
        seconds = []
        for i in range(FLAGS.repeats):
          start = time.perf_counter()
          p, s = jax.block_until_ready(ways[name](p, s, jax.random.fold_in(key, i)))
          seconds.append(time.perf_counter() - start)
        rate = per_round / statistics.median(seconds)
        rates[name].append(rate)
        print(json.dumps({"way": name, "per_round": per_round, "round": r, "client_updates_per_s": rate}), flush=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    summary[str(per_round)] = {"vmap_client_updates_per_s": med["vmap"], "loop_client_updates_per_s": med["loop"],
                               "ratio": med["vmap"] / med["loop"], "max_parameter_difference": gap,
                               "local_steps": steps, "batch": FLAGS.batch}
  print(json.dumps({"summary": summary, "jax": jax.__version__}))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
