"""Greedy decoding against beam search: exact match of a sequence-to-sequence run's translations.

    python -m experiments.bench.beams --workdir=RUN [--steps=1000,2000,3000] [--split=validation] \\
        [--beam_sizes=1,2,4] [--length_penalties=0.6,1.0] [--batch_size=500]

At each checkpoint step (default: the latest) it translates every example of the split with
greedy decoding (beam size 1: `nets.decoding.greedy_translate`, the decoder behind the
trainer's `exact_match`) and with beam search (`nets.decoding.beam_translate`) for every
other beam size and length penalty, and counts the translations equal to their targets (eos
and padding included). It prints a Markdown table (step, decoder, exact match, seconds) and,
last, one JSON line of the same rows. Choose a length penalty on a validation split, then
report the test split with that one.
"""

from __future__ import annotations

import json
from typing import Callable

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags

from experiments import cli
from experiments.config import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "A sequence-to-sequence run directory (flags.flags, checkpoints/).",
                      required=True)
  flags.DEFINE_list("steps", [], "Checkpoint steps (default: the latest).")
  flags.DEFINE_string("split", "", "Split to translate (default: the run's --eval_split).")
  flags.DEFINE_list("beam_sizes", ["1", "2", "4"], "Beam sizes (1: greedy decoding).")
  flags.DEFINE_list("length_penalties", ["1.0"], "Length penalties of beam search (each with each beam size > 1).")
  flags.DEFINE_integer("batch_size", 500, "Source sequences per decoding call.", lower_bound=1)


def _numbers(values: list[str], flag: str, kind: type, least: float) -> list:
  try:
    out = [kind(v) for v in values]
  except ValueError:
    raise ConfigError(f"--{flag} must be a comma-separated list of {kind.__name__}s; got {','.join(values)}") from None
  if any(not v >= least for v in out):
    raise ConfigError(f"--{flag} must be >= {least}; got {','.join(values)}")
  return out


def exact_match(workdir: str, steps: list[int | None], split: str, beam_sizes: list[int],
                length_penalties: list[float], batch_size: int = 500,
                report: Callable[[dict], None] = lambda row: None) -> list[dict]:
  """Rows {step, split, decoder, beam_size, length_penalty, exact_match, examples, seconds}:
  the share of `split` that each decoder translates exactly, at each checkpoint step; each
  row is also passed to `report` as it is measured."""
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import nets  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from experiments import build, checkpoint, data  # pylint: disable=g-import-not-at-top
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.from_workdir(workdir)
  if config.objective != "seq2seq":
    raise ConfigError(f"--workdir={workdir} is not a sequence-to-sequence run (--objective={config.objective})")
  greedy = jax.jit(nets.decoding.greedy_translate, static_argnums=(0, 3, 4, 5))
  beam = jax.jit(nets.decoding.beam_translate, static_argnums=(0, 3, 4, 5, 6), static_argnames=("length_penalty",))
  decoders = [(1, None)] if 1 in beam_sizes else []
  decoders += [(k, a) for k in beam_sizes if k > 1 for a in length_penalties]
  if None in steps:
    ckpts = checkpoint.Checkpoints(epath.Path(workdir) / "checkpoints")
    steps = [ckpts.latest_step() if s is None else s for s in steps]
    ckpts.close()
  rows, examples = [], None
  for step in steps:
    run = build.restore(workdir, step)
    if examples is None:
      split = split or run.config.eval_split
      try:
        run.source.builder.info.splits[split]  # (a slice such as test[:100] is a split too)
      except (KeyError, ValueError):
        raise ConfigError(f"--split={split}: {config.dataset} has splits "
                          f"{', '.join(run.source.builder.info.splits)}") from None
      examples = data.read_split(run.source.builder, split)
    model, objective, params = run.model, run.objective, run.params
    length = examples["y"].shape[1]
    for k, alpha in decoders:
      start, right = time.perf_counter(), 0
      for i in range(0, len(examples["x"]), batch_size):
        x, y = examples["x"][i:i + batch_size], examples["y"][i:i + batch_size]
        if k == 1:
          out = greedy(model, params, x, length, objective.bos_id, objective.eos_id)
        else:
          out = beam(model, params, x, length, k, objective.bos_id, objective.eos_id, length_penalty=alpha).tokens[:, 0]
        right += int(np.all(np.asarray(out) == y, axis=-1).sum())
      rows.append({"step": step, "split": split,
                   "decoder": "greedy" if k == 1 else f"beam {k}, length penalty {alpha:g}", "beam_size": k,
                   "length_penalty": alpha, "exact_match": right / len(examples["x"]),
                   "examples": len(examples["x"]), "seconds": round(time.perf_counter() - start, 2)})
      report(rows[-1])
  return rows


def main() -> None:
  steps = _numbers(FLAGS.steps, "steps", int, 0) or [None]
  beam_sizes = _numbers(FLAGS.beam_sizes, "beam_sizes", int, 1)
  penalties = _numbers(FLAGS.length_penalties, "length_penalties", float, -1e6)
  print(f"{FLAGS.workdir}, split {FLAGS.split or 'of the run (--eval_split)'}; seconds include compiling\n")
  print("| step | decoder | exact match | seconds |\n|---:|---|---:|---:|", flush=True)
  row = lambda r: print(f"| {r['step']} | {r['decoder']} | {r['exact_match']:.4f} ({r['examples']} examples) | "
                        f"{r['seconds']:.1f} |", flush=True)
  rows = exact_match(FLAGS.workdir, steps, FLAGS.split, beam_sizes, penalties, FLAGS.batch_size, row)
  print(json.dumps(rows))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
