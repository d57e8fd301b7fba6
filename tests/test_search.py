"""Architecture search (launch/search.py): spaces, regularised evolution, the worker loop, kill -9
resume, two workers on one storage, pruning, the outputs, the final retrain and bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from launch import evolution, search_results  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch import space as space_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch import study as study_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.conftest import ROOT, run_cli, train_in_process  # pylint: disable=wrong-import-position

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A tiny space over the MNIST-1D paper CNN: 60 steps, an evaluation every 20.
TINY = '''
from launch.space import Space

def choose(c):
  width = c.categorical("width", (4, 8))
  return {{"cnn.features": [width] * 3, "learning_rate": c.float("learning_rate", 3e-3, 3e-2, log=True)}}

SPACE = Space(base="experiments/flags/mnist1d_cnn.flags", overlay=["experiments/flags/mnist1d_validation.flags"],
              flags={{"steps": {steps}, "eval_every": 20, "log_every": 20, "checkpoint_every": 20, "eval_train": False,
                     "batch_size": 50}}, choose=choose, retrain_flags={{"steps": 40}})
'''


def tiny_space(tmp_path, steps=60, name="tiny"):
  path = tmp_path / f"{name}.py"
  path.write_text(TINY.format(steps=steps))
  return str(path)


def settings(name="tiny", sampler="random", pruner="none", max_params=0, second=""):
  return study_lib.Settings(name, "val/accuracy", "maximize", max_params, second, sampler, pruner)


# --- spaces ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist1d_cnn", "mnist1d_mlp", "shakespeare_char_gpt"])
def test_every_sample_of_our_spaces_is_a_valid_run(name):
  _, space = space_lib.load(os.path.join(ROOT, "launch", "spaces", f"{name}.py"))
  assert space_lib.check(space, count=32) > 32  # random samples, every categorical value and range end
  for seed in range(20):  # the test split is off in a trial wherever validation is carved from training
    lines = space_lib.trial_lines(space, space_lib.sample(space, seed)[2])
    config = space_lib.config_of(lines)
    assert config.eval_split == "" or (not config.validation_fraction and "test" not in config.eval_split)


def test_conditional_choices():
  _, space = space_lib.load(os.path.join(ROOT, "launch", "spaces", "mnist1d_cnn.py"))
  for seed in range(50):
    params, _, flags = space_lib.sample(space, seed)
    layers = params["layers"]
    assert len(flags["cnn.features"]) == len(flags["cnn.kernel_size"]) == len(flags["cnn.strides"]) == layers
    assert {f"channels_{i}" for i in range(layers)} <= set(params)
    assert not {f"channels_{i}" for i in range(layers, 4)} & set(params)  # unused layers choose nothing
    if params["pool"] == "max":  # pooling halves the length: no strided convolutions, no stride choices
      assert flags["cnn.strides"] == [1] * layers and not any(k.startswith("stride_") for k in params)


@pytest.mark.parametrize("body, message", [
    ('{"cnn.no_such_field": c.categorical("x", (1, 2))}', "Unknown command line flag 'cnn.no_such_field'"),
    ('{"no_such_flag": 1}', "Unknown command line flag 'no_such_flag'"),
    ('{"cnn.activation": c.categorical("act", ("relu", "nope"))}', "act=nope"),
    ('{"learning_rate": c.float("lr", -1, 1)}', "lr="),
])
def test_a_bad_space_is_one_line_before_any_trial(tmp_path, body, message):
  path = tmp_path / "bad.py"
  path.write_text("from launch.space import Space\n"
                  f"SPACE = Space(base='experiments/flags/mnist1d_cnn.flags', "
                  f"overlay=['experiments/flags/mnist1d_validation.flags'], choose=lambda c: {body})\n")
  _, space = space_lib.load(str(path))
  with pytest.raises(space_lib.SpaceError, match=message) as e:
    space_lib.check(space)
  assert "\n" not in str(e.value)


def test_a_space_without_validation_is_refused(tmp_path):
  path = tmp_path / "on_test.py"
  path.write_text("from launch.space import Space\nSPACE = Space(base='experiments/flags/mnist1d_cnn.flags', "
                  "choose=lambda c: {'learning_rate': c.float('lr', 1e-3, 1e-2)})\n")
  _, space = space_lib.load(str(path))
  with pytest.raises(space_lib.SpaceError, match="chooses on validation data only"):
    space_lib.check(space)


def test_bad_budgets_and_storage():
  for text in ("0", "0s", "-5", "soon"):
    with pytest.raises(study_lib.SearchError):
      study_lib.parse_duration(text)
  assert study_lib.parse_duration("90m") == 5400 and study_lib.parse_duration("1.5h") == 5400
  with pytest.raises(study_lib.SearchError, match="--storage: /proc/nope/study.journal cannot be written"):
    study_lib.check_storage("/proc/nope/study.journal", "/tmp")


def test_bad_input_at_the_command_line(tmp_path):
  space = tiny_space(tmp_path)
  for args, message in [(["--trials=0"], "no budget"), (["--trials=1", "--time_budget=0"], "a budget of 0"),
                        (["--trials=1", "--storage=/proc/nope/s.journal"], "cannot be written"),
                        (["--trials=1", "--sampler=evolution", "--second_objective=num_params"], "one objective")]:
    proc = run_cli(f"--space={space}", f"--root={tmp_path}/root", *args, module="launch.search", check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not os.path.exists(tmp_path / "root" / "trials")


# --- regularised evolution -----------------------------------------------------------------------

def objective(trial):
  n = trial.suggest_int("layers", 1, 4)
  return sum(trial.suggest_categorical(f"width_{i}", (1, 2, 3, 4)) for i in range(n)) + trial.suggest_float("x", 0, 1)


def test_regularised_evolution_population_tournament_and_mutation():
  sampler = evolution.RegularizedEvolutionSampler(population_size=8, sample_size=3, seed=0)
  study = optuna.create_study(direction="maximize", sampler=sampler)
  study.optimize(objective, n_trials=60)
  trials = study.trials
  assert all(evolution.PARENT not in t.system_attrs for t in trials[:8])  # random until the population is full
  children = trials[8:]
  assert all(evolution.PARENT in t.system_attrs for t in children)
  for child in children:
    parent = trials[child.system_attrs[evolution.PARENT]]
    # the population the child was bred from: the 8 trials before it (the oldest left)
    assert child.number - 8 <= parent.number < child.number
    shared = set(parent.params) & set(child.params)
    changed = [k for k in shared if parent.params[k] != child.params[k]]
    assert changed == [child.system_attrs[evolution.MUTATED]]  # exactly one choice changed
    # choices the mutation did not bring in or remove are the parent's
    if child.system_attrs[evolution.MUTATED] != "layers":
      assert set(child.params) == set(parent.params)
  assert [t.number for t in sampler.population(study)] == list(range(52, 60))  # size P, the newest
  assert study.best_value > 15  # (the best possible is 17)


def test_mutations_draw_another_value():
  rng = random.Random(0)
  d = optuna.distributions
  for dist, value in [(d.CategoricalDistribution((1, 2, 3)), 2), (d.IntDistribution(1, 4), 1),
                      (d.IntDistribution(1, 64, log=True), 8), (d.FloatDistribution(1e-3, 1e-1, log=True), 0.01)]:
    for _ in range(20):
      new = evolution.mutate(rng, dist, value)
      assert new != value and dist._contains(dist.to_internal_repr(new))  # pylint: disable=protected-access


def test_pareto_front():
  points = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (40, 0.9), (5, 0.3)]
  assert search_results.pareto_front(points, maximize=True) == [5, 0, 1, 4]


# --- searches ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  """A search of 3 trials in this process, with every evaluation split the runs read recorded."""
  from experiments import data  # pylint: disable=g-import-not-at-top
  from launch import worker as worker_lib  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("search")
  name, space = space_lib.load(tiny_space(tmp))
  root = str(tmp / "root")
  read = []
  original = data.EvalBatches.__init__

  def spy(self, config, b, split=None):
    read.append(split or config.eval_split)
    original(self, config, b, split)

  data.EvalBatches.__init__ = spy
  try:
    os.makedirs(root)
    worker = worker_lib.Worker(name, space, settings(), root, seed=1)
    worker.work(3, float("inf"))
  finally:
    data.EvalBatches.__init__ = original
  return name, space, root, worker.study, read


def test_a_search_trains_trials_on_validation_only(searched):
  _, _, root, study, read = searched
  assert study_lib.counts(study)["complete"] == 3
  assert read and all(split == "train[90%:]" for split in read), read  # the validation examples, never test
  for t in study.trials:
    with open(os.path.join(root, t.user_attrs["workdir"], "summary.json"), encoding="utf-8") as f:
      summary = json.load(f)
    assert summary["val/accuracy"] == t.value and not any(k.startswith("eval/") for k in summary)
    assert sorted(t.intermediate_values) == [20, 40, 60]


def test_outputs_and_the_best_flag_file_reproduce_the_trial(searched, tmp_path):
  _, space, root, study, _ = searched
  summary = search_results.write(study, space, root, settings())
  for name in ("leaderboard.csv", "leaderboard.jsonl", "best.flags", "pareto.png", "progress.png", "search.json"):
    assert os.path.exists(os.path.join(root, name)), name
  rows = [json.loads(line) for line in open(os.path.join(root, "leaderboard.jsonl"), encoding="utf-8")]
  assert [r["value"] for r in rows] == sorted((t.value for t in study.trials), reverse=True)
  best = max(study.trials, key=lambda t: t.value)
  assert summary["best"]["trial"] == best.number
  again = train_in_process(f"--flagfile={root}/best.flags", workdir=str(tmp_path / "again"))
  assert again["val/accuracy"] == best.value  # the same run: the same figure


def test_the_final_retrain_reads_the_test_split_once(searched):
  _, space, root, study, _ = searched
  out = search_results.retrain(study, space, root, [0], on_validation=True)
  assert out["metric"] == "eval/accuracy" and len(out["values"]) == 1 and 0 < out["mean"] <= 1
  with open(os.path.join(root, "retrain", "seed=0", "flags.flags"), encoding="utf-8") as f:
    flags = f.read()
  assert "--validation_fraction=0.0\n" in flags and "--eval_split=test\n" in flags and "--steps=40\n" in flags
  assert "--eval_every=0\n" in flags  # the test split read after the last step only
  with open(os.path.join(root, "retrain", "seed=0", "metrics.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f if "eval/accuracy" in line] == [40]


def test_pruned_trials_stop_early_and_are_recorded_pruned(tmp_path):
  from launch import worker as worker_lib  # pylint: disable=g-import-not-at-top
  name, space = space_lib.load(tiny_space(tmp_path, steps=100))
  root = str(tmp_path / "root")
  os.makedirs(root)
  worker = worker_lib.Worker(name, space, settings(), root)
  worker.study.pruner = optuna.pruners.ThresholdPruner(lower=1.01)  # (no accuracy reaches it: prune at once)
  worker.work(2, float("inf"))
  trials = worker.study.trials
  assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
  for t in trials:
    assert list(t.intermediate_values) == [20]
    with open(os.path.join(root, t.user_attrs["workdir"], "metrics.jsonl"), encoding="utf-8") as f:
      steps = [json.loads(line)["step"] for line in f]
    assert max(steps) == 20  # trained to its first evaluation only
    assert not os.path.exists(os.path.join(root, t.user_attrs["workdir"], "summary.json"))


def test_a_trial_in_its_own_process_is_pruned_by_sigterm(tmp_path):
  from launch import worker as worker_lib  # pylint: disable=g-import-not-at-top
  name, space = space_lib.load(tiny_space(tmp_path, steps=100))
  root = str(tmp_path / "root")
  os.makedirs(root)
  worker = worker_lib.Worker(name, space, settings(), root, trial_process="subprocess")
  worker.study.pruner = optuna.pruners.ThresholdPruner(lower=1.01)
  worker.work(1, float("inf"))
  (trial,) = worker.study.trials
  assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [20]
  with open(os.path.join(root, trial.user_attrs["workdir"], "run.log"), encoding="utf-8") as f:
    log = f.read()
  assert "SIGTERM: saved the checkpoint" in log  # stopped early, its run's checkpoint kept
  assert not os.path.exists(os.path.join(root, trial.user_attrs["workdir"], "summary.json"))


def test_parameter_budget_refuses_before_training(tmp_path):
  from launch import worker as worker_lib  # pylint: disable=g-import-not-at-top
  name, space = space_lib.load(tiny_space(tmp_path))
  root = str(tmp_path / "root")
  os.makedirs(root)
  # width 4: 338 parameters, width 8: 858 (3 convolutions and a 10-way head on 5 positions)
  worker = worker_lib.Worker(name, space, settings(max_params=500), root, seed=3)
  worker.work(2, float("inf"))
  c = study_lib.counts(worker.study)
  assert c["complete"] == 2 and c["refused"] >= 1
  for t in worker.study.trials:
    assert (t.params["width"] == 8) == bool(t.user_attrs.get(study_lib.OVER)), t.params
    assert t.user_attrs["num_params"] == (858 if t.params["width"] == 8 else 338)
    if t.user_attrs.get(study_lib.OVER):  # not trained: no folder
      assert not os.path.exists(os.path.join(root, t.user_attrs["workdir"]))


def test_two_objectives_give_a_pareto_front(tmp_path):
  from launch import worker as worker_lib  # pylint: disable=g-import-not-at-top
  name, space = space_lib.load(tiny_space(tmp_path))
  root = str(tmp_path / "root")
  os.makedirs(root)
  chosen = settings(sampler="nsga2", second="num_params")
  worker = worker_lib.Worker(name, space, chosen, root, seed=2)
  worker.work(3, float("inf"))
  trials = worker.study.trials
  assert [t.values[1] for t in trials] == [t.user_attrs["num_params"] for t in trials]
  front = {t.number for t in worker.study.best_trials}
  points = [(t.values[1], t.values[0]) for t in trials]
  assert front == {trials[i].number for i in search_results.pareto_front(points, maximize=True)}
  search_results.write(worker.study, space, root, chosen)
  assert os.path.exists(os.path.join(root, "pareto.png"))


def _study(root, name="tiny", sampler="random"):
  return study_lib.open_study(name, root, settings(name, sampler))


def test_killed_with_sigkill_mid_trial_and_run_again(tmp_path):
  space = tiny_space(tmp_path, steps=200)
  root = str(tmp_path / "root")
  args = [sys.executable, "-m", "launch.search", f"--space={space}", f"--root={root}", "--trials=3",
          "--sampler=random"]
  log = tmp_path / "search.log"
  with open(log, "w", encoding="utf-8") as out:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  checkpoints = os.path.join(root, "trials", "0001", "checkpoints")
  while not (os.path.isdir(checkpoints) and any(p.isdigit() for p in os.listdir(checkpoints))):
    assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # mid-trial 1: after its first checkpoint, before its end
  proc.wait()
  study = _study(root)
  assert study_lib.counts(study)["complete"] == 1 and study_lib.counts(study)["running"] == 1
  out = run_cli(f"--space={space}", f"--root={root}", "--trials=3", "--sampler=random", module="launch.search")
  assert "trial 1: its worker" in out.stdout and "queued again" in out.stdout
  study = _study(root)
  c = study_lib.counts(study)
  assert (c["complete"], c["dead"], c["running"], c["waiting"]) == (3, 1, 0, 0), c
  done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len({t.user_attrs["workdir"] for t in done}) == 3  # no trial counted twice
  retry = next(t for t in done if t.system_attrs.get("failed_trial") == 1)
  assert retry.params == study.trials[1].params and retry.user_attrs["workdir"] == os.path.join("trials", "0001")
  with open(os.path.join(root, "trials", "0001", "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f if '"val/accuracy"' in line]
  assert steps[-1] == 200 and set(steps) == set(range(20, 201, 20))
  assert "Resumed from the checkpoint" in out.stdout  # its run went on from its checkpoint, not from scratch


def test_two_workers_share_one_study(tmp_path):
  space = tiny_space(tmp_path)
  root = str(tmp_path / "root")
  out = run_cli(f"--space={space}", f"--root={root}", "--trials=4", "--workers=2", "--sampler=random",
                module="launch.search", timeout=400)
  assert "2 workers started" in out.stdout
  study = _study(root)
  trials = study.trials
  assert study_lib.counts(study)["complete"] == 4 and len(trials) == 4
  assert len({t.user_attrs["workdir"] for t in trials}) == 4
  assert len({t.system_attrs[study_lib.WORKER] for t in trials}) == 2  # both worked
  for t in trials:  # each trial's run started once: no second start in its folder
    assert not os.path.exists(os.path.join(root, t.user_attrs["workdir"], "resumes.jsonl"))
    with open(os.path.join(root, t.user_attrs["workdir"], "metrics.jsonl"), encoding="utf-8") as f:
      assert [json.loads(line)["step"] for line in f if "val/accuracy" in line] == [20, 40, 60]


def test_slurm_job_array_script(tmp_path):
  space = tiny_space(tmp_path)
  out = run_cli(f"--space={space}", f"--root={tmp_path}/root", "--trials=8", "--backend=slurm", "--workers=3",
                "--partition=cpu", "--dry_run", module="launch.search")
  assert "#SBATCH --array=0-2" in out.stdout and "#SBATCH --partition=cpu" in out.stdout
  assert '--worker_index="$SLURM_ARRAY_TASK_ID"' in out.stdout and "--trials=8" in out.stdout
