"""Generate from a trained run's latest checkpoint.

    python -m experiments.sample --workdir=RUN --prompt="ROMEO:" --num_tokens=500 \\
        --temperature=0.8 --top_k=40 --seed=0 [--top_p=0.9] [--min_p=0.05] [--repetition_penalty=1.2]
    python -m experiments.sample --workdir=RUN --prompt="ROMEO:" --num_tokens=100 --beam_size=4 \\
        [--length_penalty=1.0] [--eos=$'\\n']

A language model (`--objective=lm`: gpt, rnn_lm) continues the prompt, sampling each token
(`--temperature=0`: greedy) after the repetition penalty, top-k, nucleus (top-p) and min-p
filtering, or with beam search when `--beam_size` > 1 (then the sampling flags do not
apply). A sequence-to-sequence model translates the prompt (e.g. `--prompt=2048` for
numbers_to_words) greedily, or with beam search when `--beam_size` > 1. Beam search ranks
finished hypotheses by log-probability / length ** `--length_penalty`. The run's own flags
(workdir/flags.flags) rebuild its model and vocabulary.
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
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")  # what beam search ignores


def define_flags() -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "Run directory holding flags.flags and checkpoints/.", required=True)
  flags.DEFINE_string("prompt", "\n", "Text to continue (or to translate).")
  flags.DEFINE_integer("num_tokens", 500, "Tokens to generate.", lower_bound=1)
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature (0: greedy).", lower_bound=0.0)
  flags.DEFINE_integer("top_k", 40, "Sample from the k most likely tokens (0: all).", lower_bound=0)
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: from the fewest most likely tokens whose probabilities sum to "
                     "at least p, in (0, 1] (1: all).")
  flags.DEFINE_float("min_p", 0.0, "Sample from the tokens at least min_p times as likely as the most likely one, "
                     "in [0, 1) (0: all).")
  flags.DEFINE_float("repetition_penalty", 1.0, "CTRL's penalty (> 0) on the tokens of the prompt and of the text "
                     "so far: their positive logits divided by it, negative ones multiplied (1: none).")
  flags.DEFINE_integer("beam_size", 1, "Beam search with this many hypotheses (1: sampling, or greedy translation).",
                       lower_bound=1)
  flags.DEFINE_float("length_penalty", 1.0, "Beam search: finished hypotheses rank by log-probability / "
                     "length ** length_penalty (0: no normalisation; larger favours longer ones).")
  flags.DEFINE_string("eos", "", "Beam search of a language model: a hypothesis ends at this text (one token of the "
                      "vocabulary, e.g. a newline); empty: all run --num_tokens tokens.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def check_options(top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, beam_size: int = 1,
                  length_penalty: float = 1.0, eos: str = "") -> None:
  """Raises ConfigError, naming the flag, for decoding options out of range or that do not go together."""
  import nets  # pylint: disable=g-import-not-at-top
  try:
    nets.decoding.check_sampling(top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty)
    nets.decoding.check_beam(beam_size, 1, length_penalty)
  except ValueError as e:
    raise config_lib.ConfigError(f"--{e}") from None
  if beam_size > 1:
    for name, value, neutral in (("top_p", top_p, 1.0), ("min_p", min_p, 0.0),
                                 ("repetition_penalty", repetition_penalty, 1.0)):
      if value != neutral:
        raise config_lib.ConfigError(f"--{name}={value} is a sampling option; beam search (--beam_size={beam_size}) "
                                     "does not sample: leave it out, or use --beam_size=1")
  elif eos:
    raise config_lib.ConfigError("--eos ends beam search hypotheses; it needs --beam_size > 1")


def _token(tokenizer, text: str, flag: str) -> int:
  """The id of `text`, which must be one token of the vocabulary."""
  try:
    ids = tokenizer.encode(text)
  except ValueError as e:
    raise config_lib.ConfigError(f"{flag}: {e}") from None
  if len(ids) != 1:
    raise config_lib.ConfigError(f"{flag}={text!r} is {len(ids)} tokens of the vocabulary; it must be one")
  return int(ids[0])


def generate(workdir: str, prompt: str, num_tokens: int, temperature: float, top_k: int, seed: int,
             step: int | None = None, *, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             beam_size: int = 1, length_penalty: float = 1.0, eos: str = "") -> str:
  """The text a run's checkpoint generates from `prompt` (its continuation, or translation):
  sampled, or with `beam_size` > 1 the best hypothesis of beam search (temperature, top_k and
  seed then do not apply)."""
  check_options(top_p, min_p, repetition_penalty, beam_size, length_penalty, eos)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import nets  # pylint: disable=g-import-not-at-top

  config = config_lib.from_workdir(workdir)
  if config.objective not in ("lm", "seq2seq"):
    raise config_lib.ConfigError(f"the run in {workdir} has --objective={config.objective}; sampling needs a "
                                 "language model (lm) or a sequence-to-sequence model (seq2seq)")
  if config.objective == "seq2seq" and (top_p, min_p, repetition_penalty) != (1.0, 0.0, 1.0):
    raise config_lib.ConfigError("--top_p, --min_p and --repetition_penalty are sampling options; a "
                                 "sequence-to-sequence model translates greedily, or with --beam_size > 1")
  if config.objective == "seq2seq" and eos:
    raise config_lib.ConfigError("--eos is for language models; a translation ends at its model's own eos")
  restored = build.restore(workdir, step)
  source, model, objective, params = restored.source, restored.model, restored.objective, restored.params
  try:
    tokens = source.tokenizer.encode(prompt)
  except ValueError as e:
    raise config_lib.ConfigError(f"--prompt: {e}") from None
  eos_id = _token(source.tokenizer, eos, "--eos") if eos else None
  if config.objective == "seq2seq":
    length = source.example["y"].shape[1]
    if beam_size > 1:
      beams = jax.jit(nets.decoding.beam_translate, static_argnums=(0, 3, 4, 5, 6), static_argnames=(
          "length_penalty",))(model, params, tokens[None], length, beam_size, objective.bos_id, objective.eos_id,
                              length_penalty=length_penalty)
      out = beams.tokens[:, 0]
    else:
      out = jax.jit(nets.decoding.greedy_translate, static_argnums=(0, 3, 4, 5))(
          model, params, tokens[None], length, objective.bos_id, objective.eos_id)
    return source.tokenizer.decode(np.asarray(out[0]).tolist())
  if beam_size > 1:
    beams = jax.jit(nets.decoding.beam_search, static_argnums=(0, 3, 4), static_argnames=(
        "length_penalty", "eos_id"))(model, params, tokens[None], num_tokens, beam_size,
                                     length_penalty=length_penalty, eos_id=eos_id)
    out = np.asarray(beams.tokens[0, 0])[:int(beams.lengths[0, 0])]
    return prompt + source.tokenizer.decode(out.tolist())
  out = jax.jit(nets.decoding.sample, static_argnums=(0, 3), static_argnames=(
      "temperature", "top_k", "top_p", "min_p", "repetition_penalty"))(
          model, params, tokens[None], num_tokens, jax.random.key(seed), temperature=temperature, top_k=top_k,
          top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty)
  return prompt + source.tokenizer.decode(np.asarray(out[0]).tolist())


def main() -> None:
  if FLAGS.beam_size > 1:  # the sampling flags' defaults are not neutral: refuse only those given
    given = [f"--{name}" for name in SAMPLING if FLAGS[name].present]
    if given:
      raise config_lib.ConfigError(f"{', '.join(given)}: sampling option(s); beam search (--beam_size="
                                   f"{FLAGS.beam_size}) does not sample: leave them out, or use --beam_size=1")
  elif FLAGS["length_penalty"].present:
    raise config_lib.ConfigError("--length_penalty ranks beam search hypotheses; it needs --beam_size > 1")
  text = generate(FLAGS.workdir, FLAGS.prompt, FLAGS.num_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.seed,
                  FLAGS.step, top_p=FLAGS.top_p, min_p=FLAGS.min_p, repetition_penalty=FLAGS.repetition_penalty,
                  beam_size=FLAGS.beam_size, length_penalty=FLAGS.length_penalty, eos=FLAGS.eos)
  sys.stdout.write(text + "\n")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
