"""Sweeps: expansion, resolved flag files, the local backend end to end (and its skip of
finished runs), the SLURM script and TPU VM commands (dry run), the report's numbers.
The real SLURM cluster is exercised by .ci/slurm_test.sh."""

import csv
import json
import os
import random
import textwrap

import pytest

from conftest import ROOT, run_cli
from launch import backends, report, spec
from launch.spec import Report, Sweep, SweepError, choice, log_uniform


def test_grid_random_and_seeds_expand_to_named_runs():
  sweep = Sweep(base=["experiments/flags/mnist1d_mlp.flags", "experiments/flags/mnist1d_cnn.flags"],
                grid={"learning_rate": [1e-3, 1e-2]}, random={"weight_decay": log_uniform(1e-5, 1e-1),
                                                              "mlp.dropout": choice(0.0, 0.5)},
                num_random=3, seeds=(0, 1), flags={"steps": 10})
  runs = spec.expand(sweep)
  assert len(runs) == 2 * 2 * 3 * 2
  assert len({r.name for r in runs}) == len(runs)
  assert runs[0].name.startswith("flagfile=mnist1d_mlp,learning_rate=0.001,weight_decay=")
  assert runs[0].name.endswith(",seed=0") and runs[1].name.endswith(",seed=1")
  assert [r.point for r in spec.expand(sweep)] == [r.point for r in runs]  # seeded: the same draws
  decays = {r.point["weight_decay"] for r in runs}
  assert len(decays) == 3 and all(1e-5 <= d <= 1e-1 for d in decays)
  assert {r.base for r in runs} == set(sweep.bases)
  args = runs[0].args()
  assert args[0] == "--steps=10" and "--learning_rate=0.001" in args and args[-1] == "--seed=0"
  assert not any(a.startswith("--flagfile") for a in args)


@pytest.mark.parametrize("kwargs,message", [
    ({"base": "experiments/flags/nope.flags"}, "does not exist"),
    ({"base": []}, "names no base"),
    ({"grid": {"learning_rate": 0.1}}, "non-empty list"),
    ({"random": {"learning_rate": [0.1]}, "num_random": 2}, "must be a distribution"),
    ({"random": {"learning_rate": log_uniform(1e-3, 1e-1)}}, "num_random"),
    ({"grid": {"seed": [1, 2]}}, "reserved"),
    ({"seeds": ()}, "no seeds"),
])
def test_bad_sweeps_are_rejected(kwargs, message):
  with pytest.raises(SweepError, match=message):
    Sweep(**{"base": "experiments/flags/mnist1d_mlp.flags", **kwargs})


def test_resolved_flag_file_expands_includes_and_ends_with_the_run_flags():
  run = spec.expand(Sweep(base="experiments/flags/mnist1d_gru.flags", grid={"rnn.hidden": [8]},
                          flags={"steps": 7}))[0]
  lines = spec.resolved_flagfile(run).splitlines()
  assert lines[0].startswith("# Sweep run rnn.hidden=8,seed=0") or lines[0].startswith("# Sweep run hidden=8")
  assert "--dataset=mnist1d" in lines  # from mnist1d_paper.flags, included by mnist1d_gru.flags
  assert not any(line.startswith("--flagfile") for line in lines)
  assert lines[-3:] == ["--steps=7", "--rnn.hidden=8", "--seed=0"]
  assert lines.index("--rnn.hidden=6") < lines.index("--rnn.hidden=8")  # the sweep's value comes later


def test_every_sweep_file_loads():
  for name in sorted(os.listdir(os.path.join(ROOT, "launch", "sweeps"))):
    if name.endswith(".py"):
      _, sweep = spec.load(os.path.join(ROOT, "launch", "sweeps", name))
      assert spec.expand(sweep)
  _, table = spec.load(os.path.join(ROOT, "launch", "sweeps", "mnist1d_table.py"))
  assert len(spec.expand(table)) == 7 * 3


def test_sbatch_script_and_tpu_commands(tmp_path):
  runs = spec.expand(Sweep(base="experiments/flags/mnist1d_logreg.flags", grid={"learning_rate": [0.1, 0.2]}))
  planned = [backends.Planned(r, f"{tmp_path}/{r.name}") for r in runs]
  options = backends.SlurmOptions(partition="gpu", time="0:30:00", ntasks_per_run=2, cpus_per_task=4,
                                  gpus_per_task=1, mem="16G", array_parallel=1)
  script = backends.sbatch_script("lr", str(tmp_path), planned, options, python="/venv/bin/python")
  for directive in ["--array=0-1%1", "--ntasks=2", "--cpus-per-task=4", "--gpus-per-task=1", "--mem=16G",
                    "--partition=gpu", "--time=0:30:00", f"--output={tmp_path}/slurm/%A_%a.out"]:
    assert f"#SBATCH {directive}\n" in script
  assert f"  {tmp_path}/learning_rate=0.1,seed=0\n  {tmp_path}/learning_rate=0.2,seed=0\n" in script
  assert 'srun --kill-on-bad-exit=1 /venv/bin/python -m experiments.run --flagfile="$RUN/sweep.flags"' in script

  commands = backends.tpu_commands(planned, "/mnt/runs", backends.TpuOptions("v4-32", "us-central2-b", "proj"))
  assert commands[0][:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32", "--zone=us-central2-b",
                             "--project=proj", "--worker=all"]
  assert commands[0][9] == ("--command=cd ~/nets && python3 -m experiments.run "
                            "--flagfile=experiments/flags/mnist1d_logreg.flags --learning_rate=0.1 --seed=0 "
                            "--workdir=/mnt/runs/learning_rate=0.1,seed=0 --distributed.mode=on")
  with pytest.raises(SweepError, match="--tpu and --zone"):
    backends.tpu_commands(planned, "/mnt/runs", backends.TpuOptions())


def test_variants_and_overlays_compose_in_order():
  sweep = Sweep(base="experiments/flags/mnist1d_mlp.flags", overlay=["experiments/flags/mnist1d_validation.flags"],
                variants={"none": {}, "both": {"mlp.dropout": 0.3, "eval_every": 100}},
                grid={"learning_rate": [0.1]}, flags={"eval_every": 50, "steps": 7})
  runs = spec.expand(sweep)
  assert [r.name for r in runs] == ["variant=none,learning_rate=0.1,seed=0", "variant=both,learning_rate=0.1,seed=0"]
  lines = spec.resolved_flagfile(runs[1]).splitlines()
  assert lines.index("--model=mlp") < lines.index("--validation_fraction=0.1")  # the overlay after the base
  assert lines[-5:] == ["--eval_every=100", "--steps=7", "--mlp.dropout=0.3", "--learning_rate=0.1", "--seed=0"]
  assert "--mlp.dropout=0.3" not in spec.resolved_flagfile(runs[0])
  command = backends.tpu_commands([backends.Planned(runs[0], "/r/x")], "/r", backends.TpuOptions("v4-8", "z"))[0][-1]
  assert ("--flagfile=experiments/flags/mnist1d_mlp.flags --flagfile=experiments/flags/mnist1d_validation.flags "
          "--eval_every=50") in command
  with pytest.raises(SweepError, match="reserved"):
    Sweep(base="experiments/flags/mnist1d_mlp.flags", variants={"a": {"mlp.dropout": 0.1}},
          grid={"mlp.dropout": [0.2]})
  with pytest.raises(SweepError, match="overlay flag file"):
    Sweep(base="experiments/flags/mnist1d_mlp.flags", overlay=["experiments/flags/nope.flags"])


def test_power_law_and_pareto_front():
  a, b = report.power_law([100, 1000, 10000], [0.5 * 100 ** -0.3, 0.5 * 1000 ** -0.3, 0.5 * 10000 ** -0.3])
  assert abs(a - 0.5) < 1e-9 and abs(b + 0.3) < 1e-12
  assert report.power_law([100], [0.1]) is None
  points = [(1, 0.50, "a"), (2, 0.70, "b"), (3, 0.60, "c"), (4, 0.90, "d"), (4, 0.80, "e"), (0.5, 0.40, "f")]
  assert [p[2] for p in report.pareto_front(points, higher_is_better=True)] == ["f", "a", "b", "d"]
  assert [p[2] for p in report.pareto_front(points, higher_is_better=False)] == ["f"]


def test_report_chooses_on_validation_per_flag_file(tmp_path):
  path = tmp_path / "choose.py"
  path.write_text(textwrap.dedent("""
      from launch.spec import Report, Sweep
      F = "experiments/flags/"
      SWEEP = Sweep(base=[F + "mnist1d_mlp.flags", F + "mnist1d_cnn.flags"], grid={"learning_rate": [0.1, 0.2]},
                    seeds=(0, 1), report=Report(metric="eval/accuracy", choose="val/accuracy"))
  """))
  root = str(tmp_path / "runs")
  val = {("mlp", 0.1): (0.5, 0.7), ("mlp", 0.2): (0.6, 0.5), ("cnn", 0.1): (0.9, 0.9), ("cnn", 0.2): (0.8, 0.95)}
  for (model, lr), (v0, v1) in val.items():
    for seed, v in enumerate((v0, v1)):
      _fake_run(root, f"flagfile=mnist1d_{model},learning_rate={lr},seed={seed}",
                **{"val/accuracy": v, "eval/accuracy": lr + seed / 100})
  text = report.report(str(path), root)
  chosen = text.split("Chosen on val/accuracy")[1]
  assert "| mnist1d_mlp | learning_rate=0.1 | 0.6 | **0.105 ± 0.0071** |" in chosen  # 0.6 > 0.55
  assert "| mnist1d_cnn | learning_rate=0.1 | 0.9 | **0.105" in chosen  # 0.9 > 0.875


def test_report_against_a_summary_key_with_error_fit_targets_and_pareto(tmp_path):
  path = tmp_path / "data.py"
  path.write_text(textwrap.dedent("""
      from launch.spec import Report, Sweep
      F = "experiments/flags/"
      SWEEP = Sweep(base=[F + "mnist1d_mlp.flags", F + "mnist1d_cnn.flags"], grid={"train_examples": [100, 1000, 10000]},
                    report=Report(metric="eval/accuracy", percent=True, error=True, x="train_examples",
                                  fit="power_law", targets={F + "mnist1d_cnn.flags": 0.9},
                                  extra={"fit/accuracy - eval/accuracy": "gap"}))
  """))
  root = str(tmp_path / "runs")
  for model, a in (("mlp", 0.8), ("cnn", 0.4)):
    for n in (100, 1000, 10000):
      _fake_run(root, f"flagfile=mnist1d_{model},train_examples={n},seed=0",
                **{"eval/accuracy": 1 - a * n ** -0.25, "fit/accuracy": 1.0, "train_flops": n * (10 if model == "mlp"
                                                                                                 else 30)})
  text = report.report(str(path), root)
  assert "1 - eval/accuracy: mean" in text
  assert "| mnist1d_cnn | -0.250 | 0.4 | 256 (for 10.0%) |" in text  # 0.4 n^-0.25 = 0.1 at n = 4^4
  assert "| `mnist1d_mlp.flags` | 100 | **25.3%** | 25.3 | 25.3 |" in text  # error 0.8 / 100^0.25; the gap
  compute = report.report(str(path), root, x="train_flops", pareto=True, out="compute")
  assert "Pareto front of the 6 runs (lower 1 - eval/accuracy, lower train_flops)" in compute
  front = [line.split(" | ")[0][2:] for line in compute.split("Pareto front")[1].splitlines() if "seed=" in line]
  # The MLP's 10,000-FLOP run (error 14.2%) is beaten by the CNN's 3,000-FLOP one (12.6%).
  assert front == [f"flagfile=mnist1d_{m},train_examples={n},seed=0"
                   for m, n in (("mlp", 100), ("cnn", 100), ("cnn", 1000), ("cnn", 10000))]
  assert os.path.getsize(os.path.join(root, "compute.png")) > 1000 and os.path.exists(os.path.join(root, "report.png"))
  with pytest.raises(SweepError, match="choices are made on validation metrics"):
    Report(choose="eval/accuracy")
  with pytest.raises(SweepError, match="--x=nope: neither a varied flag"):
    report.report(str(path), root, x="nope")


def _fake_run(root, name, **summary):
  os.makedirs(os.path.join(root, name))
  with open(os.path.join(root, name, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f)


def test_report_means_stds_and_missing_runs(tmp_path):
  path = tmp_path / "lr.py"
  path.write_text(textwrap.dedent("""
      from launch.spec import Report, Sweep
      SWEEP = Sweep(base="experiments/flags/mnist1d_logreg.flags", grid={"learning_rate": [0.001, 0.1]},
                    seeds=(0, 1, 2), report=Report(metric="eval/accuracy", percent=True,
                                                   extra={"wall_time_s": "time (s)"}))
  """))
  root = str(tmp_path / "runs")
  for seed, acc in enumerate([0.5, 0.6, 0.7]):
    _fake_run(root, f"learning_rate=0.001,seed={seed}", **{"eval/accuracy": acc, "wall_time_s": 10.0 * (seed + 1)})
  _fake_run(root, "learning_rate=0.1,seed=0", **{"eval/accuracy": 0.9, "wall_time_s": 5.0})
  text = report.report(str(path), root)
  # mean 0.6, sample std 0.1 (n - 1); mean time 20 s; the other point has 1 of 3 runs.
  assert "| 0.001 | **60.0 ± 10.0%** | 50.0 / 60.0 / 70.0 | 20 |" in text
  assert "| 0.1 | **90.0%** (2 missing) | 90.0 | 5.00 |" in text
  assert "4 of 6 runs finished" in text
  with open(os.path.join(root, "report.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert rows[0]["learning_rate"] == "0.001" and abs(float(rows[0]["std"]) - 0.1) < 1e-12
  assert os.path.getsize(os.path.join(root, "report.png")) > 1000
  with pytest.raises(SweepError, match="no run"):
    report.report(str(path), str(tmp_path / "empty"))


def test_local_sweep_runs_skips_finished_runs_and_reports(tmp_path):
  path = tmp_path / "tiny.py"
  path.write_text(textwrap.dedent("""
      from launch.spec import Sweep
      SWEEP = Sweep(base="experiments/flags/mnist1d_logreg.flags", seeds=(0, 1),
                    flags={"steps": 5, "log_every": 5, "eval_every": 0, "checkpoint_every": 0})
  """))
  root = tmp_path / "runs"
  out = run_cli(f"--sweep={path}", f"--root={root}", "--max_parallel=2", module="launch.sweep").stdout
  assert "2 runs, 0 done, 2 to launch" in out
  for seed in (0, 1):
    summary = json.loads((root / f"seed={seed}" / "summary.json").read_text())
    assert summary["step"] == 5
    assert "--seed=%d" % seed in (root / f"seed={seed}" / "sweep.flags").read_text()
  assert "2 runs, 2 done, 0 to launch" in run_cli(f"--sweep={path}", f"--root={root}", module="launch.sweep").stdout
  status = run_cli(f"--sweep={path}", f"--root={root}", "--status", module="launch.sweep").stdout
  assert "2 runs: 2 done" in status
  assert "| **" in run_cli(f"--sweep={path}", f"--root={root}", module="launch.report").stdout


def test_launcher_rejects_bad_input(tmp_path):
  proc = run_cli("--sweep=launch/sweeps/nope.py", module="launch.sweep", check=False)
  assert proc.returncode != 0 and "no such file" in proc.stderr
  proc = run_cli("--sweep=launch/sweeps/ci_tiny.py", "--backend=cloud", module="launch.sweep", check=False)
  assert proc.returncode != 0 and "cloud" in proc.stderr
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  proc = run_cli(f"--sweep={empty}", module="launch.sweep", check=False)
  assert proc.returncode != 0 and "must define SWEEP" in proc.stderr


def test_distributions_stay_in_range():
  rng = random.Random(0)
  assert all(1e-4 <= log_uniform(1e-4, 1e-1).sample(rng) <= 1e-1 for _ in range(100))
  assert {choice("a", "b").sample(rng) for _ in range(50)} == {"a", "b"}
  assert Report().metric == "eval/accuracy"
