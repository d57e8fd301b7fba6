"""jit over a Mesh, pmap, and a single device give the same parameters (4 fake CPU devices):
an MLP classifier on MNIST-1D and a GPT on character-level text;
and the step's matrix-product FLOPs are counted the same. (Processes and fsdp meshes: test_multihost.py.)"""

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import json, sys
    import jax, numpy as np
    from experiments import checkpoint, train
    from experiments.config import Config, ConfigError, Parallel, Sample

    assert jax.device_count() == 4, jax.devices()
    workdir = sys.argv[1]
    results = {}
    text = dict(dataset="char_text", eval_split="validation", objective="lm", block_size=16, eval_batches=2,
                sample=Sample(tokens=0))  # character-level Tiny Shakespeare
    gpt = {"num_layers": 1, "num_heads": 2, "embed_dim": 16}
    for name, model, hparams, data in [  # the spine is the same for every family: an MLP and a GPT
        ("mlp", "mlp", {"features": (32, 32)}, {}), ("gpt", "gpt", gpt, text)]:
      base = Config(model=model, model_hparams=hparams, steps=6, batch_size=32, eval_batch_size=200,
                    log_every=3, eval_every=3, checkpoint_every=0, learning_rate=3e-3, seed=1, **data)
      params = {}
      for mode, n in [("jit", 1), ("jit", 4), ("pmap", 4)]:
        run = f"{workdir}/{name}-{mode}{n}"
        summary = train.train_and_evaluate(base.replace(parallel=Parallel(mode, n)), run)
        state = checkpoint.Checkpoints(run + "/checkpoints").restore_raw()
        params[f"{mode}{n}"] = (jax.tree.leaves(state["params"]), summary["eval/loss"])
      ref, ref_loss = params["jit1"]
      results[name] = {
          name: {"max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(ref, leaves)),
                 "eval_loss_diff": abs(loss - ref_loss),
                 "moved": max(float(np.max(np.abs(a))) for a in leaves)}
          for name, (leaves, loss) in params.items()}
    # The matrix products of one step of the whole batch, however it is split (a pmap's body
    # is one device's share, counted once for each device).
    results["matmul_flops"] = {f"{mode}{n}": train.prepare(Config(batch_size=32, parallel=Parallel(mode, n)))
                               .steps.matmul_flops_per_step(1) for mode, n in [("jit", 1), ("jit", 4), ("pmap", 4)]}
    try:
      train.train_and_evaluate(Config(batch_size=30, steps=1), workdir + "/bad")
      results["indivisible"] = "no error"
    except ConfigError as e:
      results["indivisible"] = str(e)
    print("RESULTS" + json.dumps(results))
""")


def test_jit_pmap_and_single_device_agree(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.split("RESULTS", 1)[1])
  for model in ("mlp", "gpt"):
    for mode in ("jit4", "pmap4"):
      r = results[model][mode]
      assert r["max_abs_diff"] < 1e-5, (model, mode, r)
      assert r["eval_loss_diff"] < 1e-5, (model, mode, r)
  assert len(set(results["matmul_flops"].values())) == 1 and results["matmul_flops"]["jit1"] > 0, results["matmul_flops"]
  assert "--batch_size=30 is not divisible by the 4 devices" in results["indivisible"]
