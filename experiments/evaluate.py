"""Evaluate a trained run's checkpoint on any split, without training.

    python -m experiments.evaluate --workdir=RUN [--step=N] [--split=test|validation|train|SPLIT]

The run's own flags (RUN/flags.flags) rebuild its model, objective and data; the latest
checkpoint (or step N's) is read, never written or moved, and the parameters' moving
average is used where the run kept one, as its own evaluations do. The metrics are printed
and appended to RUN/evaluations.jsonl (or written to --out). `--split`: the run's test split
(--eval_split, the default), `validation` (its --validation_fraction; without one, the
dataset's split of that name), `train` (the examples it trained on) or any TFDS split or slice of the dataset (`test[:50%]`). Text and audio
datasets are evaluated on random windows as in training (`--eval_batches` of them, default
the run's --final_eval_batches or --eval_batches).
"""

from __future__ import annotations

import datetime
import json
import sys

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags
from etils import epath

from experiments import cli
from experiments import config as config_lib
from experiments.config import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "Run directory holding flags.flags and checkpoints/.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0)
  flags.DEFINE_string("split", "", "test (the run's --eval_split; the default), validation, train, or a TFDS split "
                      "or slice of the run's dataset.")
  flags.DEFINE_integer("eval_batch_size", 0, "Evaluation batch size (0: the run's).", lower_bound=0)
  flags.DEFINE_integer("eval_batches", 0, "Text and audio: random windows, in batches (0: the run's final "
                       "evaluation's).", lower_bound=0)
  flags.DEFINE_string("out", "", "Also write the metrics as JSON to this file (the workdir's evaluations.jsonl "
                      "gets them in any case, unless the workdir is not writable).")


def _resolve(config: config_lib.Config, split: str) -> tuple[str, str]:
  """The TFDS split to read for `--split` and the metrics' prefix."""
  if split in ("", "test", config.eval_split):
    if not config.eval_split:
      raise ConfigError("--split: the run has no test split (--eval_split was empty); name a split")
    return config.eval_split, "eval"
  if split == "validation" and config.validation_split is not None:  # (else the dataset's own, if it has one)
    return config.validation_split, "val"
  if split == "train":
    return config.fit_split, "fit"
  return split, "eval"


def evaluate(workdir: str, split: str = "", step: int | None = None, eval_batch_size: int = 0,
             eval_batches: int = 0) -> dict[str, float]:
  """The metrics of a run's checkpoint (the latest, or `step`'s) on `split` (module docstring),
  with "step" and "split"."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments import build, data, feed, train  # pylint: disable=g-import-not-at-top
  from experiments.parallel import DataParallel  # pylint: disable=g-import-not-at-top

  config = config_lib.from_workdir(workdir)
  tfds_split, prefix = _resolve(config, split)
  changes = {"eval_split": tfds_split}
  if eval_batch_size:
    changes["eval_batch_size"] = eval_batch_size
  if eval_batches:
    changes.update(eval_batches=eval_batches, final_eval_batches=0)
  try:
    eval_config = config.replace(**changes)
  except ConfigError as e:
    raise ConfigError(f"--split={split}: {e}") from None
  par = DataParallel("jit")  # every local device, whatever the run trained on
  par.check_batch_size(eval_config.eval_batch_size, "--eval_batch_size")
  restored = build.restore(workdir, step, config=eval_config)
  step = restored.step
  state = build.TrainState(step=jnp.asarray(step, jnp.int32), params=restored.params,
                           model_state=restored.model_state, opt_state=None)
  state = jax.device_put(state, par.replicated)
  sharding = jax.tree.map(lambda _: par.replicated, state)
  p_eval = par.compile(functools.partial(train.eval_step, model=restored.model, objective=restored.objective,
                                         call=restored.call), sharding, returns_state=False)
  host = data.eval_batches(eval_config, restored.source, final=True)
  eval_key = jax.random.split(jax.random.key(config.seed), 3)[2]  # the run's own evaluation key
  metrics = train.evaluate(p_eval, state, feed.DeviceBatches(host, par.put_batch, 0), eval_key, prefix)
  return {"step": int(step), "split": tfds_split, **metrics}


def main() -> None:
  metrics = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.step, FLAGS.eval_batch_size, FLAGS.eval_batches)
  record = {**metrics, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  print(f"step {metrics['step']}, {metrics['split']}: " + ", ".join(
      f"{k} {v:.6g}" for k, v in metrics.items() if isinstance(v, float)))
  line = json.dumps(record) + "\n"
  try:
    with (epath.Path(FLAGS.workdir) / "evaluations.jsonl").open("a") as f:
      f.write(line)
  except OSError as e:
    print(f"warning: {FLAGS.workdir}/evaluations.jsonl not written ({e})", file=sys.stderr)
  if FLAGS.out:
    epath.Path(FLAGS.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
