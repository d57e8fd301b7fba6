"""Federated simulation speed against Flower's own simulation runtime, same clients and model.

    python -m experiments.bench.federated_flower [--rounds=12] [--skip=2]

The run of `mnist1d_fedavg.flags` as the issue's speed set-up asks: the MNIST-1D paper CNN,
the 4,000 published training examples IID among 100 clients of 40, 10 a round, E = 1 local
epoch of batches of B = 10 (4 SGD steps). Two ways to run its rounds:

- `ours`: the training spine's round (`experiments.federated.round_step`, what
  `experiments.run --fed.*` runs): the sampled clients as one `vmap` of a `lax.scan`, one
  jitted program a round;
- `flower`: Flower's simulation runtime (`flwr.simulation.run_simulation`, Ray actors, one
  virtual SuperNode per client, `--cpus_per_client` CPUs each) running our Flower app
  (`experiments.flower`): each sampled client's message goes to an actor, which trains that one
  client with the same jitted local update, and the ServerApp aggregates as ours does.

Ours is timed before and after Flower's (alternating), each round separately; the first
`--skip` rounds of each (compiling, Ray starting its actors, each actor building the run) are
left out. Both end with the same parameters (checked). Prints one JSON line per round and a
summary: client updates per second (clients a round / median round seconds) and the ratio.
Needs `pip install 'flwr[simulation]'` (Ray): a baseline, not a dependency of the library.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
SETUP = ["--flagfile=experiments/flags/mnist1d_fedavg.flags", "--validation_fraction=0", "--fed.local_epochs=1",
         "--fed.local_batch_size=10", "--fed.local_learning_rate=0.1", "--eval_every=0", "--checkpoint_every=0",
         "--runtime.cpu_threads=0"]


def define_flags() -> None:
  flags.DEFINE_integer("rounds", 12, "Rounds each way runs.", lower_bound=2)
  flags.DEFINE_integer("skip", 2, "First rounds of each way left out of the timing.", lower_bound=0)
  flags.DEFINE_float("cpus_per_client", 1.0, "Flower: CPUs Ray gives each client actor (2 cores here: 2 actors).")
  flags.DEFINE_float("poll_s", 0.002, "Flower: seconds between the ServerApp's pulls of replies (a deployment's "
                     "default is 0.2; Flower's own send_and_receive waits 3).", lower_bound=0.0)


def ours(config, rounds: int) -> tuple[list[float], dict]:
  """Each round's seconds on the spine, and the final parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top
  run = train.prepare(config)
  state, steps = run.state, run.steps
  steps.executable(1)
  seconds = []
  for r in range(rounds):
    span = steps.span(r, 1)
    start = time.perf_counter()
    state, _ = steps(state, span)
    jax.block_until_ready(state)
    seconds.append(time.perf_counter() - start)
  return seconds, state.params


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flwr.serverapp import ServerApp  # pylint: disable=g-import-not-at-top
  from flwr.simulation import run_simulation  # pylint: disable=g-import-not-at-top
  from experiments import flower  # pylint: disable=g-import-not-at-top

  folder = tempfile.mkdtemp(prefix="bench-flower-")
  flagfile = os.path.join(folder, "run.flags")
  with open(flagfile, "w", encoding="utf-8") as f:
    f.write("\n".join(SETUP + [f"--steps={FLAGS.rounds}", f"--log_every={FLAGS.rounds}"]) + "\n")
  config = flower.load_config(flagfile)
  per_round = config.fed.clients_per_round
  out = os.path.join(folder, "flower.npz")
  flower_seconds: list[float] = []

  server_app = ServerApp()

  @server_app.main()
  def _(grid, context):  # pylint: disable=unused-argument
    flower_seconds.extend(flower.serve(grid, flagfile, out, timeout=600.0, poll_s=FLAGS.poll_s))

  results = {"ours": [], "flower": []}
  before, params = ours(config, FLAGS.rounds)
  results["ours"] += before[FLAGS.skip:]
  run_simulation(server_app=server_app, client_app=flower.client_app, num_supernodes=config.fed.clients,
                 backend_config={"client_resources": {"num_cpus": FLAGS.cpus_per_client, "num_gpus": 0.0},
                                 "init_args": {"num_cpus": os.cpu_count(), "include_dashboard": False}})
  results["flower"] += flower_seconds[FLAGS.skip:]
  after, _ = ours(config, FLAGS.rounds)
  results["ours"] += after[FLAGS.skip:]
  for name, seconds in results.items():
    for s in seconds:
      print(json.dumps({"way": name, "seconds": s, "client_updates_per_s": per_round / s}), flush=True)
  theirs = flower.read_params(out)
  gap = max(float(np.abs(np.asarray(a) - theirs[n]).max())
            for n, a in zip(flower.names(params), jax.tree.leaves(params)))
  rate = {name: per_round / statistics.median(seconds) for name, seconds in results.items()}
  print(json.dumps({"summary": {"ours_client_updates_per_s": rate["ours"],
                                "flower_client_updates_per_s": rate["flower"],
                                "ratio": rate["ours"] / rate["flower"], "max_parameter_difference": gap,
                                "clients_per_round": per_round, "rounds_timed": len(results["flower"])},
                    "jax": jax.__version__}))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
