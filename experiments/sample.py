"""Generate from a trained run's latest checkpoint.

    python -m experiments.sample --workdir=RUN --prompt="ROMEO:" --num_tokens=500 \\
        --temperature=0.8 --top_k=40 --seed=0

A language model (`--objective=lm`: gpt, rnn_lm) continues the prompt; a sequence-to-
sequence model translates it greedily (e.g. `--prompt=2048` for numbers_to_words). The
run's own flags (workdir/flags.flags) rebuild its model and vocabulary.
"""

from __future__ import annotations

import sys

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags

from experiments import build, cli
from experiments import config as config_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "Run directory holding flags.flags and checkpoints/.", required=True)
  flags.DEFINE_string("prompt", "\n", "Text to continue (or to translate).")
  flags.DEFINE_integer("num_tokens", 500, "Tokens to generate.", lower_bound=1)
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature (0: greedy).", lower_bound=0.0)
  flags.DEFINE_integer("top_k", 40, "Sample from the k most likely tokens (0: all).", lower_bound=0)
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def generate(workdir: str, prompt: str, num_tokens: int, temperature: float, top_k: int, seed: int,
             step: int | None = None) -> str:
  """The text a run's checkpoint generates from `prompt` (its continuation, or translation)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import nets  # pylint: disable=g-import-not-at-top

  config = config_lib.from_workdir(workdir)
  if config.objective not in ("lm", "seq2seq"):
    raise config_lib.ConfigError(f"the run in {workdir} has --objective={config.objective}; sampling needs a "
                                 "language model (lm) or a sequence-to-sequence model (seq2seq)")
  restored = build.restore(workdir, step)
  source, model, objective, params = restored.source, restored.model, restored.objective, restored.params
  try:
    tokens = source.tokenizer.encode(prompt)
  except ValueError as e:
    raise config_lib.ConfigError(f"--prompt: {e}") from None
  if config.objective == "seq2seq":
    length = source.example["y"].shape[1]
    out = jax.jit(nets.decoding.greedy_translate, static_argnums=(0, 3, 4, 5))(
        model, params, tokens[None], length, objective.bos_id, objective.eos_id)
    return source.tokenizer.decode(np.asarray(out[0]).tolist())
  out = jax.jit(nets.decoding.sample, static_argnums=(0, 3), static_argnames=("temperature", "top_k"))(
      model, params, tokens[None], num_tokens, jax.random.key(seed), temperature=temperature, top_k=top_k)
  return prompt + source.tokenizer.decode(np.asarray(out[0]).tolist())


def main() -> None:
  text = generate(FLAGS.workdir, FLAGS.prompt, FLAGS.num_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.seed,
                  FLAGS.step)
  sys.stdout.write(text + "\n")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
