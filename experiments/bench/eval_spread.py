"""How precise is a language model's validation loss? Re-estimate it from a run's checkpoint.

    python -m experiments.bench.eval_spread --workdir=RUN [--windows=240 --draws=50 --seed=99]

Draws `draws` x `windows` fresh random validation windows of the run's block size and prints
the mean loss over all of them (with its standard error) and the spread of the
`windows`-window estimates: what a reported loss measured on that many windows (nanoGPT:
20 batches of 12 = 240) can vary by.
"""

from __future__ import annotations

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags

from experiments import build, cli
from experiments.config import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "A language-model run directory (flags.flags, checkpoints/).", required=True)
  flags.DEFINE_integer("windows", 240, "Windows per estimate.", lower_bound=1)
  flags.DEFINE_integer("draws", 50, "Estimates drawn.", lower_bound=2)
  flags.DEFINE_integer("seed", 99, "Seed of the windows.")


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  run = build.restore(FLAGS.workdir)
  config, model, params = run.config, run.model, run.params
  if config.objective != "lm" or run.source.text is None:
    raise ConfigError(f"--workdir={FLAGS.workdir} is not a language model of text (--objective={config.objective})")

  @jax.jit
  def window_losses(x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(np.float32), y).mean(-1)

  text, split = run.source.text, config.eval_split
  rng = np.random.default_rng(FLAGS.seed)
  estimates, losses = [], []
  for _ in range(FLAGS.draws):
    batch = text.windows(split, rng, FLAGS.windows, config.block_size)
    losses.append(np.asarray(window_losses(batch["x"], batch["y"])))
    estimates.append(losses[-1].mean())
  losses, estimates = np.concatenate(losses), np.array(estimates)
  print(f"{FLAGS.workdir}: {len(losses)} windows of {config.block_size}: mean loss {losses.mean():.4f} "
        f"(standard error {losses.std() / np.sqrt(len(losses)):.4f}); {FLAGS.windows}-window estimates: "
        f"std {estimates.std(ddof=1):.4f}, range {estimates.min():.4f} to {estimates.max():.4f}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
