"""The time a search trial spends outside its training steps (start-up, compiling, reading
data, evaluating, checkpointing), with trials trained in the search's process against one
`python -m experiments.run` process per trial.

    python -m launch.bench_search_overhead [--trials=4] [--rounds=2] [--root=/tmp/search_overhead]

Each round runs the same architectures (random search, the same seed) of the MNIST-1D CNN
space (2,000 steps each) once in each mode, the modes alternating, each search with an empty
persistent compilation cache of its own (so neither reuses the other's programs, though trials
in one search reuse what that search compiled); a trial's overhead is its
wall time (from asking the study for it to telling it the result) less its training steps'
time (steps / the run's measured steps per second). Prints each mode's median per trial and
its share of the trial.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys

from absl import app, flags

from launch.spec import REPO

flags.DEFINE_integer("trials", 4, "Trials per search.", lower_bound=1)
flags.DEFINE_integer("rounds", 2, "Rounds (each: one search per mode).", lower_bound=1)
flags.DEFINE_string("root", "/tmp/search_overhead", "Where the searches go (emptied first).")
flags.DEFINE_string("space", "launch/spaces/mnist1d_cnn.py", "The space.")
FLAGS = flags.FLAGS
MODES = ("in_process", "subprocess")


def main(argv):
  del argv
  import optuna  # pylint: disable=g-import-not-at-top
  from launch import space as space_lib, study as study_lib  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  shutil.rmtree(FLAGS.root, ignore_errors=True)
  name, space = space_lib.load(os.path.join(REPO, FLAGS.space))
  rows = {m: [] for m in MODES}
  for r in range(FLAGS.rounds):
    for mode in (MODES if r % 2 == 0 else MODES[::-1]):
      root = os.path.join(FLAGS.root, f"{mode}-{r}")
      # each search compiles afresh: its own empty persistent compilation cache
      env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(FLAGS.root, f"cache-{mode}-{r}")}
      code = subprocess.run([sys.executable, "-m", "launch.search", f"--space={FLAGS.space}", f"--root={root}",
                             f"--trials={FLAGS.trials}", "--sampler=random", f"--seed={r}", f"--trial_process={mode}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            check=False).returncode
      if code:
        raise SystemExit(f"the {mode} search failed (exit {code}): {root}")
      settings = study_lib.Settings(name, space.metric, space.direction, space.max_params, "", "random", "none")
      study = study_lib.open_study(name, root, settings)
      for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        steps_s = a["step"] / a["train_steps_per_sec"]
        rows[mode].append({"wall": a["wall_s"], "steps": steps_s, "compile": a["compile_s"],
                           "outside": a["wall_s"] - steps_s})
      print(f"round {r} {mode}: " + ", ".join(f"{x['wall']:.1f} s ({x['outside']:.1f} outside)"
                                               for x in rows[mode][-FLAGS.trials:]), flush=True)
  print(f"\n{'mode':<11} {'trials':>6} {'wall s':>7} {'steps s':>8} {'outside s':>10} {'compile s':>10} "
        f"{'outside/wall':>13}")
  for mode in MODES:
    med = {k: statistics.median(x[k] for x in rows[mode]) for k in ("wall", "steps", "outside", "compile")}
    share = statistics.median(x["outside"] / x["wall"] for x in rows[mode])
    print(f"{mode:<11} {len(rows[mode]):>6} {med['wall']:>7.1f} {med['steps']:>8.1f} {med['outside']:>10.1f} "
          f"{med['compile']:>10.1f} {share:>12.0%}")


if __name__ == "__main__":
  app.run(main)
