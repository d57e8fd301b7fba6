"""Attribution throughput against Captum, on the MNIST-1D paper CNN, the same weights and examples.

    python -m experiments.bench.attribution --workdir=RUN --captum_python=/work/captum_venv/bin/python \\
        [--examples=1000] [--rounds=3] [--out=bench.json]

RUN is a trained `experiments/flags/mnist1d_cnn.flags` run. Its weights go to PyTorch's layout
in an .npz that `experiments/bench/captum_reference.py` (run by `--captum_python`, a Python
with torch and captum: a baseline, never a dependency) loads into the paper's own PyTorch
model. Round by round, alternating, it times integrated gradients (64 Gauss-Legendre steps,
zero baseline, the predicted class) and SmoothGrad (50 samples, signed gradients) for all
`--examples` test examples, here (`nets.attribution`, jitted, compiled before timing) and in
Captum (after a warm-up call), and prints one JSON line per measurement and a summary with the
ratio of medians. It also checks that both compute the same integrated gradients.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
REFERENCE = os.path.join(os.path.dirname(__file__), "captum_reference.py")


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A trained mnist1d_cnn.flags run.", required=True)
  flags.DEFINE_string("captum_python", None, "A Python with torch and captum.", required=True)
  flags.DEFINE_integer("examples", 1000, "Test examples attributed per call.", lower_bound=1)
  flags.DEFINE_integer("rounds", 3, "Alternating rounds.", lower_bound=1)
  flags.DEFINE_integer("repeats", 3, "Timed calls per round and side (their median is the round's).", lower_bound=1)
  flags.DEFINE_integer("threads", 2, "PyTorch's intra-op threads (XLA uses every core).", lower_bound=1)
  flags.DEFINE_integer("batch_size", 50, "Ours: examples attributed at once (nets.attribution's batch_size; "
                       "fewer rows at a time stay in cache).", lower_bound=1)
  flags.DEFINE_string("out", None, "Write every measurement here as JSON lines.")


def torch_layout(params) -> dict:
  """The paper CNN's Flax parameters as ConvBase's state dict (conv kernels [k, in, out] ->
  [out, in, k]; the dense kernel transposed; the flatten is channel-major on both sides)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  names = ["Conv_0", "Conv_1", "Conv_2", "Dense_0"]
  shapes = {k: tuple(v["kernel"].shape) for k, v in params.items()}
  if list(params) != names or shapes["Dense_0"] != (125, 10) or shapes["Conv_0"] != (5, 1, 25):
    raise ConfigError(f"--workdir: expected the MNIST-1D paper CNN (mnist1d_cnn.flags); its layers are {shapes}")
  out = {}
  for i in range(3):
    out[f"conv{i}.weight"] = np.transpose(np.asarray(params[f"Conv_{i}"]["kernel"]), (2, 1, 0))
    out[f"conv{i}.bias"] = np.asarray(params[f"Conv_{i}"]["bias"])
  out["linear.weight"] = np.asarray(params["Dense_0"]["kernel"]).T
  out["linear.bias"] = np.asarray(params["Dense_0"]["bias"])
  return out


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments import build, explain  # pylint: disable=g-import-not-at-top
  from nets import attribution  # pylint: disable=g-import-not-at-top

  if not os.path.exists(FLAGS.captum_python):
    raise ConfigError(f"--captum_python={FLAGS.captum_python}: no such file")
  restored = build.restore(FLAGS.workdir)
  s = explain.subject(restored, split=None, examples=FLAGS.examples, target="predicted", prompt=None, length=0)
  weights = torch_layout(restored.params)
  x, target = np.asarray(s.x), np.asarray(s.target)
  tmp = tempfile.mkdtemp()
  npz = os.path.join(tmp, "weights.npz")
  np.savez(npz, x=x, target=target, **weights)

  fn, bs = s.fn(), FLAGS.batch_size
  ig = jax.jit(lambda v, t: attribution.integrated_gradients(fn, v, t, steps=64, batch_size=bs))
  sg = jax.jit(lambda v, t: attribution.smoothgrad(fn, v, t, jax.random.key(0), samples=50, batch_size=bs))
  ours = {"ig": ig, "smoothgrad": sg}
  for f in ours.values():
    jax.block_until_ready(f(s.x, s.target))  # compile

  def time_ours(method):
    seconds = []
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      jax.block_until_ready(ours[method](s.x, s.target))
      seconds.append(time.perf_counter() - start)
    return {"library": "ours", "jax": jax.__version__, "method": method, "batch_size": FLAGS.batch_size, "examples": len(x), "seconds": seconds,
            "examples_per_s": len(x) / statistics.median(seconds)}

  def time_captum(method, save=None):
    cmd = [FLAGS.captum_python, REFERENCE, f"--weights={npz}", f"--method={method}", f"--threads={FLAGS.threads}",
           f"--repeats={FLAGS.repeats}"] + ([f"--out={save}"] if save else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

  # The same integrated gradients both ways.
  theirs = os.path.join(tmp, "captum_ig.npz")
  time_captum("ig", save=theirs)
  mine, gap = ig(s.x, s.target)
  ref = np.load(theirs)
  scale = float(np.abs(ref["attributions"]).max())
  agreement = {"max_abs_difference_over_max": float(np.abs(np.asarray(mine) - ref["attributions"]).max() / scale),
               "gap_max_abs_difference": float(np.abs(np.asarray(gap) - ref["delta"]).max())}
  print(json.dumps({"agreement": agreement}))

  records = []
  for r in range(FLAGS.rounds):
    for method in ("ig", "smoothgrad"):
      for side in ((time_ours, time_captum) if r % 2 == 0 else (time_captum, time_ours)):
        rec = {**side(method), "round": r}
        records.append(rec)
        print(json.dumps(rec), flush=True)
  summary = {"agreement": agreement, "machine_cores": os.cpu_count()}
  for method in ("ig", "smoothgrad"):
    rate = {lib: statistics.median(r["examples_per_s"] for r in records if r["method"] == method and r["library"] == lib)
            for lib in ("ours", "captum")}
    summary[method] = {**{f"{k}_examples_per_s": v for k, v in rate.items()}, "ratio": rate["ours"] / rate["captum"]}
  print(json.dumps({"summary": summary}))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      for rec in records + [{"summary": summary}]:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
