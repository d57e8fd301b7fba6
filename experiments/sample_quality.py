"""Scores an image generator with a digits classifier trained here (our metric, not FID).

    python -m experiments.run --flagfile=experiments/flags/digits_cnn.flags --workdir=runs/digits_cnn
    python -m experiments.sample_quality --classifier=runs/digits_cnn --workdir=runs/ddpm_digits

Prints the scores of `score(workdir, classifier)` as one JSON line and writes them to
WORKDIR/sample_quality.json. No hub model is downloaded, so this is our own metric. The
scores:
- `frechet_distance`: the Frechet distance between Gaussians fitted to the classifier's
  penultimate-layer features (the input of its last Dense layer) of `num_samples` generated
  images and of the real held-out images (the classifier run's evaluation split), as FID does
  with Inception features (Heusel et al. 2017);
- `frechet_distance_real`: the same distance from as many real training images to the
  held-out images: the floor that finite samples give, to read the first against;
- `confidence`: the classifier's mean top-class probability on generated images, and
  `class_entropy`: the entropy (nats) of its average prediction (log 10 = 2.303 when
  every class is generated equally often);
- for class-conditional generators (sample i is of class i % num_classes), `accuracy`:
  how often the classifier names the class the sample was generated for.
"""

from __future__ import annotations

import json

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

import flax.linen as nn
import jax
import numpy as np
from absl import flags
from etils import epath
from scipy import linalg

from experiments import build, cli, data, logs, samples
from experiments.config import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "Run directory of the generator.", required=True)
  flags.DEFINE_string("classifier", None, "Run directory of the classifier (e.g. digits_cnn.flags).", required=True)
  flags.DEFINE_integer("num_samples", 1000, "Images to generate.", lower_bound=2)
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def frechet_distance(a, b) -> float:
  """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = linalg.sqrtm(cov_a @ cov_b)
  if not np.isfinite(covmean).all():  # singular product: regularise, as FID implementations do
    offset = np.eye(len(cov_a)) * 1e-6
    covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
  covmean = np.real(covmean)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def feature_fn(model, variables):
  """x -> (the input of the model's last Dense layer, class probabilities), jitted."""

  @jax.jit
  def features(x):
    seen = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
        seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      logits = model.apply(variables, x, train=False)
    return seen[-1].reshape(len(x), -1), jax.nn.softmax(logits.astype(np.float32), -1)

  return features


def _all_inputs(batches, limit: int | None = None):
  xs = [b["x"][b["mask"] > 0] if "mask" in b else b["x"] for b in batches]
  x = np.concatenate(xs)
  return x[:limit] if limit else x


def score(workdir: str, classifier: str, num_samples: int = 1000, seed: int = 0) -> dict[str, float]:
  """The scores above for the generator run in `workdir`, by the classifier run in `classifier`."""

  gen = build.restore(workdir)
  if not hasattr(gen.objective, "generate"):
    raise ConfigError(f"the run in {workdir} (--objective={gen.config.objective}) does not generate samples")
  cls = build.restore(classifier)
  if cls.config.objective != "classification":
    raise ConfigError(f"--classifier={classifier} is not a classifier run (--objective={cls.config.objective})")
  if tuple(gen.source.example["x"].shape[1:]) != tuple(cls.source.example["x"].shape[1:]):
    raise ConfigError(f"the generator makes {gen.source.example['x'].shape[1:]} inputs, the classifier reads "
                      f"{cls.source.example['x'].shape[1:]}")
  features = feature_fn(cls.model, {"params": cls.params, **cls.model_state})
  state = build.TrainState(step=0, params=gen.params, model_state=gen.model_state, opt_state=None)
  generated = np.asarray(samples.generator(gen.model, gen.objective, num_samples)(state, jax.random.key(seed)))
  held_out = _all_inputs(data.eval_batches(cls.config, cls.source))
  real_train = _all_inputs(data.EvalBatches(cls.config, cls.source.builder, cls.config.fit_split), num_samples)
  f_gen, p_gen = map(np.asarray, features(generated))
  f_test, _ = map(np.asarray, features(held_out))
  f_train, _ = map(np.asarray, features(real_train))
  mean_p = p_gen.mean(0)
  result = {
      "frechet_distance": frechet_distance(f_gen, f_test),
      "frechet_distance_real": frechet_distance(f_train, f_test),
      "confidence": float(p_gen.max(-1).mean()),
      "class_entropy": float(-(mean_p * np.log(np.maximum(mean_p, 1e-12))).sum()),
      "num_samples": num_samples,
      "num_held_out": len(held_out),
      "num_real_train": len(real_train),
  }
  num_classes = getattr(gen.model, "num_classes", 0)
  if num_classes:
    wanted = np.arange(num_samples) % num_classes
    result["accuracy"] = float(np.mean(p_gen.argmax(-1) == wanted))
  return result


def main() -> None:
  result = score(FLAGS.workdir, FLAGS.classifier, FLAGS.num_samples, FLAGS.seed)
  logs.write_json(epath.Path(FLAGS.workdir) / "sample_quality.json", result)
  print(json.dumps(result))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
