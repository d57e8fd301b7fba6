"""Federated runs through the training spine (--fed.*): FedAvg and FedSGD against centralised
SGD, resume, 4 devices against 1, speaking roles, privacy accounting and bad input."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import ROOT
from experiments import checkpoint, federated, train
from experiments.config import Config, ConfigError, Fed, Parallel, Sample

MLP = dict(model="mlp", model_hparams={"features": (16,)}, train_examples=200, eval_batch_size=500, log_every=1,
           eval_every=0, checkpoint_every=0, seed=3)


def _params(workdir):
  return jax.tree.leaves(checkpoint.Checkpoints(f"{workdir}/checkpoints").restore_raw()["params"])


@pytest.mark.parametrize("clients", [1, 4])
def test_fedsgd_round_is_one_full_batch_sgd_step(tmp_path, clients):
  """One round of FedSGD (each client one step on all its data, server SGD at 1) is one step of
  SGD on the whole training set: with one client, and with four whose changes are averaged by
  size."""
  fed = Fed(clients=clients, clients_per_round=clients, local_epochs=1, local_batch_size=0, local_learning_rate=0.1)
  train.train_and_evaluate(Config(**MLP, fed=fed, optimizer="sgd", learning_rate=1.0, steps=1), tmp_path / "fed")
  train.train_and_evaluate(Config(**MLP, batch_size=200, optimizer="sgd", learning_rate=0.1, steps=1),
                           tmp_path / "central")
  start = train.prepare(Config(**MLP, steps=1)).state.params
  fed_params, central = _params(tmp_path / "fed"), _params(tmp_path / "central")
  assert max(np.abs(a - b).max() for a, b in zip(central, jax.tree.leaves(start))) > 1e-3  # it moved
  for a, b in zip(fed_params, central):
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_resume_is_bit_identical(tmp_path, capsys):
  """SCAFFOLD on a Dirichlet partition with DP noise and FedYogi: 4 rounds, or 2 then 2 more
  after a restart, give the very same parameters, control variates and optimizer state."""
  fed = Fed(clients=8, clients_per_round=4, partition="dirichlet", alpha=0.5, algorithm="scaffold", local_epochs=2,
            local_batch_size=8, clip_norm=1.0, noise_multiplier=0.3)
  config = Config(**{**MLP, "checkpoint_every": 2}, fed=fed, optimizer="yogi", learning_rate=0.01, steps=4)
  whole = train.train_and_evaluate(config, tmp_path / "whole")
  printed = capsys.readouterr().out
  assert "round 4/4 |" in printed and "rounds/s | " in printed and "client updates/s" in printed, printed
  train.train_and_evaluate(config.replace(steps=2), tmp_path / "split")
  resumed = train.train_and_evaluate(config, tmp_path / "split")
  a = checkpoint.Checkpoints(tmp_path / "whole/checkpoints").restore_raw()
  b = checkpoint.Checkpoints(tmp_path / "split/checkpoints").restore_raw()
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert np.abs(np.asarray(jax.tree.leaves(a["fed"]["client_controls"])[0])).max() > 0  # SCAFFOLD ran
  assert whole["eval/loss"] == resumed["eval/loss"]
  assert whole["privacy_epsilon"] == resumed["privacy_epsilon"] > 0
  saved = json.loads((tmp_path / "whole/partition.json").read_text())
  assert sorted(i for part in saved["clients_examples"] for i in part) == list(range(200))
  assert (tmp_path / "whole/partition.png").exists()


SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import json, sys
    import jax, numpy as np
    from experiments import checkpoint, train
    from experiments.config import Config, ConfigError, Fed, Parallel

    workdir = sys.argv[1]
    fed = Fed(clients=12, clients_per_round=4, partition="shards", local_epochs=2, local_batch_size=10,
              algorithm="fedprox")
    base = Config(model="mlp", model_hparams={"features": (16,)}, train_examples=240, steps=3, log_every=1,
                  eval_every=0, checkpoint_every=0, optimizer="adam", learning_rate=0.01, fed=fed)
    leaves = {}
    for n in (1, 4):
      train.train_and_evaluate(base.replace(parallel=Parallel("jit", n)), f"{workdir}/d{n}")
      leaves[n] = jax.tree.leaves(checkpoint.Checkpoints(f"{workdir}/d{n}/checkpoints").restore_raw()["params"])
    out = {"max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(leaves[1], leaves[4]))}
    try:
      train.prepare(base.replace(fed=Fed(clients=12, clients_per_round=6)))
    except ConfigError as e:
      out["indivisible"] = str(e)
    print("RESULTS" + json.dumps(out))
""")


def test_clients_split_over_four_devices_agree_with_one(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULTS", 1)[1])
  assert out["max_abs_diff"] < 1e-6, out
  assert "--fed.clients_per_round=6 is not divisible by the 4 devices" in out["indivisible"]


def test_speaking_roles_train_a_language_model(tmp_path):
  fed = Fed(clients=5, clients_per_round=2, partition="roles", local_batch_size=4, local_learning_rate=0.5)
  config = Config(dataset="char_text", eval_split="validation", objective="lm", model="gpt",
                  model_hparams={"num_layers": 1, "num_heads": 2, "embed_dim": 16}, block_size=16, eval_batches=1,
                  eval_batch_size=64, sample=Sample(tokens=0), steps=2, log_every=1, eval_every=0,
                  checkpoint_every=0, optimizer="sgd", learning_rate=1.0, fed=fed)
  summary = train.train_and_evaluate(config, tmp_path / "roles")
  assert np.isfinite(summary["eval/loss"]) and summary["train_client_updates_per_sec"] > 0
  roles = json.loads((tmp_path / "roles/partition.json").read_text())["roles"]
  assert len(roles) == 5 and "GLOUCESTER" in roles, roles  # the five roles that say most
  assert min(roles.values()) > 100


def test_privacy_spent_grows_with_rounds_and_falls_with_noise():
  def epsilon(noise, rounds):
    return federated.privacy_spent(Config(fed=Fed(clients=100, clients_per_round=10, clip_norm=1.0,
                                                  noise_multiplier=noise)), rounds)
  assert epsilon(0.0, 100) is None
  assert epsilon(1.0, 10) < epsilon(1.0, 100) < epsilon(1.0, 1000)
  assert epsilon(2.0, 100) < epsilon(1.0, 100) < epsilon(0.5, 100)
  # dp-accounting's own answer for 100 rounds at q = 0.1, z = 1: the accountant, not a formula of ours.
  import dp_accounting  # pylint: disable=g-import-not-at-top
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 100)
  pld = dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1 / 100 ** 1.1)
  assert pld <= epsilon(1.0, 100) < 1.5 * pld  # Renyi DP is a little looser than the PLD's bound
  # One round's Renyi DP scaled by the rounds is the RDP accountant composing them itself.
  composed = dp_accounting.rdp.RdpAccountant(orders=list(range(2, 257))).compose(event).get_epsilon(1 / 100 ** 1.1)
  assert epsilon(1.0, 100) == pytest.approx(composed, rel=1e-9)


@pytest.mark.parametrize("fed, extra, message", [
    (dict(clients=5, clients_per_round=6), {}, "--fed.clients_per_round=6 exceeds --fed.clients=5"),
    (dict(clients=5, partition="dirichlet", alpha=0.0, clients_per_round=2), {}, "--fed.alpha=0.0 must be > 0"),
    (dict(clients=5, clients_per_round=2, noise_multiplier=1.0), {}, "without --fed.clip_norm"),
    (dict(clients=5, clients_per_round=2), {"objective": "elbo", "model": "vae"}, "trains classifiers and language"),
    (dict(clients=5, clients_per_round=2), {"parallel": Parallel("pmap")}, "needs --parallel.mode=jit"),
    (dict(clients=5, clients_per_round=2, partition="roles"), {}, "speaking roles are the clients of"),
    (dict(local_epochs=5), {}, "--fed.local_epochs set but --fed.clients=0"),
])
def test_bad_input_is_refused_before_any_compute(fed, extra, message):
  with pytest.raises(ConfigError, match=message):
    Config(fed=Fed(**fed), **extra)


@pytest.mark.parametrize("fed, extra, message", [
    (dict(clients=150, partition="dirichlet", alpha=0.01, clients_per_round=2), {}, "left a client empty"),
    (dict(clients=150, partition="shards", clients_per_round=2), {}, "cannot each hold an example"),
    (dict(clients=4, clients_per_round=2), {"model": "cnn", "model_hparams": {"norm": "batch"}},
     "keeps variables besides its parameters"),
])
def test_partitions_and_models_that_cannot_be_trained_are_refused(tmp_path, fed, extra, message):
  with pytest.raises(ConfigError, match=message):
    train.prepare(Config(**{**MLP, **extra}, fed=Fed(**fed), steps=1))
