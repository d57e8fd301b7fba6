"""launch.fed_report: rounds to target from each run's curve, the learning rate chosen per
configuration by fewest rounds, and the factor against a baseline variant."""

import json
import os

from launch import fed_report
from launch.spec import expand, load

SWEEP = "launch/sweeps/mnist1d_fed_communication.py"


def _fake_run(root, run, curve, test):
  workdir = os.path.join(root, run.name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step, acc in curve:
      f.write(json.dumps({"step": step, "val/accuracy": acc}) + "\n")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"step": curve[-1][0], "val/accuracy": curve[-1][1], "eval/accuracy": test}, f)


def test_rounds_to_target_choice_and_speedup(tmp_path, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  _, sweep = load(SWEEP)
  runs = {(r.point["variant"], r.point["fed.partition"], r.point["fed.local_learning_rate"]): r for r in expand(sweep)}
  root = str(tmp_path)
  _fake_run(root, runs[("FedSGD", "iid", 0.3)], [(100, 0.5), (400, 0.9)], 0.91)     # 400 rounds
  _fake_run(root, runs[("FedSGD", "iid", 1.0)], [(100, 0.6), (200, 0.89)], 0.92)    # 200: chosen
  _fake_run(root, runs[("E=5, B=10", "iid", 0.3)], [(10, 0.7), (20, 0.88)], 0.93)   # 20: 10x fewer
  _fake_run(root, runs[("E=5, B=10", "iid", 1.0)], [(10, 0.2), (30, 0.5)], 0.4)     # never
  rows, missing = fed_report.table(SWEEP, root, "val/accuracy", 0.88, ["fed.local_learning_rate"], "FedSGD")
  assert missing == len(runs) - 4
  by_variant = {r["variant"]: r for r in rows}
  assert by_variant["FedSGD"]["fed.local_learning_rate"] == 1.0 and by_variant["FedSGD"]["rounds"] == 200
  assert by_variant["E=5, B=10"]["fed.local_learning_rate"] == 0.3 and by_variant["E=5, B=10"]["rounds"] == 20
  assert by_variant["E=5, B=10"]["speedup"] == 10.0
  text = fed_report.markdown(rows, "val/accuracy", 0.88, missing)
  assert "| E=5, B=10 | iid | 0.3 | 20 | 10.0x | 88.0% | 93.0% |" in text, text
  # A run stopped by a NaN counts with its curve before it, and says where it diverged.
  diverged = runs[("E=20, B=10", "iid", 0.3)]
  _fake_run(root, diverged, [(10, 0.8), (15, 0.89), (40, float("nan"))], 0.0)
  os.remove(os.path.join(root, diverged.name, "summary.json"))
  with open(os.path.join(root, diverged.name, "run.log"), "w") as f:
    f.write("error: loss is nan at step 37; stopping. No checkpoint was saved before it\n")
  rows, _ = fed_report.table(SWEEP, root, "val/accuracy", 0.88, ["fed.local_learning_rate"], "FedSGD")
  row = next(r for r in rows if r["variant"] == "E=20, B=10")
  assert row["rounds"] == 15 and row["diverged"] == [37]
  assert "diverged at round 37" in fed_report.markdown(rows, "val/accuracy", 0.88, 0)
  assert fed_report.rounds_to([(5, 0.1), (10, 0.95)], 0.9) == 10 and fed_report.rounds_to([(5, 0.1)], 0.9) is None
