"""What a sweep is: a base flag file, the flags to vary, and seeds; expanded into runs.

A sweep file (`launch/sweeps/NAME.py`) defines `SWEEP`:

    SWEEP = Sweep(
        base="experiments/flags/mnist1d_cnn.flags",
        grid={"learning_rate": [1e-3, 3e-3, 1e-2]},            # every combination
        random={"weight_decay": log_uniform(1e-5, 1e-2)},       # num_random seeded draws
        num_random=4,
        seeds=(0, 1, 2),
        flags={"steps": 3000})                                  # the same for every run

`overlay` lists flag files read after the base (their flags win), e.g. an experiment's
set-up applied to each of several models' flag files.
`variants` names sets of flags that go together, an axis of their own named "variant"
(e.g. {"none": {}, "dropout": {"mlp.dropout": 0.3}, "all": {...}}): each point takes one.

`base` may be a list of flag files: they are then an axis of their own, named "flagfile".
Each run is one point of the grid (times each random draw) and one seed. Pure Python: the
launcher never imports JAX.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import os
import random as random_lib
import re
from typing import Any, Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_root(name: str) -> str:
  """Where sweep NAME's runs go unless --root says otherwise."""
  return os.path.join(REPO, "runs", "sweeps", name)


class SweepError(ValueError):
  """A bad sweep file or launcher flag, found before anything is launched."""


# Random-search distributions: each draws one value from a `random.Random`.
@dataclasses.dataclass(frozen=True)
class choice:  # pylint: disable=invalid-name
  values: tuple

  def __init__(self, *values: Any):
    object.__setattr__(self, "values", tuple(values))

  def sample(self, rng: random_lib.Random) -> Any:
    return rng.choice(self.values)


@dataclasses.dataclass(frozen=True)
class uniform:  # pylint: disable=invalid-name
  low: float
  high: float

  def sample(self, rng: random_lib.Random) -> float:
    return float(f"{rng.uniform(self.low, self.high):.4g}")


@dataclasses.dataclass(frozen=True)
class log_uniform:  # pylint: disable=invalid-name
  low: float
  high: float

  def sample(self, rng: random_lib.Random) -> float:
    return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.3g}")


@dataclasses.dataclass(frozen=True)
class randint:  # pylint: disable=invalid-name
  low: int
  high: int  # inclusive

  def sample(self, rng: random_lib.Random) -> int:
    return rng.randint(self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Report:
  """How `launch.report` shows a sweep: the metric (as a percentage or not), summary.json
  fields shown as their mean over seeds, and fixed label columns per point (keyed by the
  value of the first varied flag, e.g. a flag file)."""

  metric: str = "eval/accuracy"
  percent: bool = False
  extra: Mapping[str, str] = dataclasses.field(default_factory=dict)  # summary key -> column header
  labels: Mapping[Any, Mapping[str, str]] = dataclasses.field(default_factory=dict)
  per_seed: bool = True
  # The plot: x is a varied flag (default: the first; a list value such as layer widths is
  # plotted by its first number) or a summary.json key (its mean over seeds: train_flops,
  # num_params, wall_time_s, ...); one line per value of `lines` (default: the other varied
  # flags, or against a summary key the first varied flag).
  x: str = ""
  lines: Sequence[str] = ()
  error: bool = False  # show 1 - metric (an error rate from an accuracy)
  log_y: bool = False
  fit: str = ""  # "power_law": per line, metric = a * x^b fitted on log-log axes (against the sweep's x)
  fit_range: tuple[float, float] = (0.0, math.inf)  # the x values the fit uses (inclusive)
  targets: Mapping[Any, float] = dataclasses.field(default_factory=dict)  # line value -> the metric to reach
  pareto: bool = False  # mark the runs no other run beats in both x (lower) and the metric
  # Per flag file (when they vary), the point with the best mean of this summary key (e.g.
  # "val/accuracy"): the choice made on validation, and its metric (the test figure) beside it.
  choose: str = ""
  x_label: str = ""  # the plot's x-axis label (default: the x key)
  # Published figures drawn on the plot: label -> [(x, metric value as reported: 1 - metric
  # with `error`), ...].
  references: Mapping[str, Sequence[tuple[float, float]]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.choose and not self.choose.startswith("val/"):
      raise SweepError(f"Report(choose={self.choose!r}): choices are made on validation metrics (val/...)")
    if self.fit not in ("", "power_law"):
      raise SweepError(f"Report(fit={self.fit!r}): the fits are power_law")


@dataclasses.dataclass(frozen=True)
class Sweep:
  base: str | Sequence[str]
  grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  random: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  num_random: int = 0
  random_seed: int = 0
  seeds: Sequence[int] = (0,)
  flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  overlay: Sequence[str] = ()
  report: Report = Report()

  def __post_init__(self):
    bases = [self.base] if isinstance(self.base, str) else list(self.base)
    if not bases:
      raise SweepError("the sweep names no base flag file")
    for path in bases:
      if not os.path.isfile(os.path.join(REPO, path)):
        raise SweepError(f"base flag file {path!r} does not exist")
    for path in self.overlay:
      if not os.path.isfile(os.path.join(REPO, path)):
        raise SweepError(f"overlay flag file {path!r} does not exist")
    for name, values in self.grid.items():
      if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise SweepError(f"grid[{name!r}] must be a non-empty list of values")
    for name, dist in self.random.items():
      if not hasattr(dist, "sample"):
        raise SweepError(f"random[{name!r}] must be a distribution (choice, uniform, log_uniform, randint)")
    if self.random and self.num_random < 1:
      raise SweepError("random search needs num_random >= 1")
    variant_flags = {k for flags_ in self.variants.values() for k in flags_}
    overlap = (set(self.grid) & set(self.random)) | ({"seed", "workdir", "flagfile", "variant"} &
                                                     (set(self.grid) | set(self.random) | set(self.flags)
                                                      | variant_flags)) | (variant_flags & (set(self.grid)
                                                                                            | set(self.random)))
    if overlap:
      raise SweepError(f"flags given twice or reserved: {sorted(overlap)}")
    if not self.seeds:
      raise SweepError("the sweep has no seeds")

  @property
  def bases(self) -> list[str]:
    return [self.base] if isinstance(self.base, str) else list(self.base)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: its point (the varied flags, "flagfile" included when it varies) and seed."""

  name: str
  base: str
  point: Mapping[str, Any]
  seed: int
  flags: Mapping[str, Any]  # the sweep's fixed flags

  variant: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # its variant's flags
  overlays: tuple[str, ...] = ()  # flag files read after the base

  def args(self) -> list[str]:
    """The run's flags after its base flag file (a variant's override the sweep's fixed flags)."""
    values = {**self.flags, **self.variant, **{k: v for k, v in self.point.items() if k not in ("flagfile", "variant")},
              "seed": self.seed}
    return [f"--{k}={format_value(v)}" for k, v in values.items()]


def format_value(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def _label(value: Any) -> str:
  text = os.path.splitext(os.path.basename(value))[0] if isinstance(value, str) and value.endswith(".flags") \
      else format_value(value)
  return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def point_name(point: Mapping[str, Any]) -> str:
  return ",".join(f"{k.split('.')[-1]}={_label(v)}" for k, v in point.items()) or "base"


def expand(sweep: Sweep) -> list[Run]:
  """Every run of the sweep, in a fixed order (points, then seeds)."""
  axes = {"flagfile": sweep.bases} if len(sweep.bases) > 1 else {}
  if sweep.variants:
    axes["variant"] = list(sweep.variants)
  axes.update(sweep.grid)
  grid_points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  rng = random_lib.Random(sweep.random_seed)
  draws = [{k: dist.sample(rng) for k, dist in sweep.random.items()} for _ in range(sweep.num_random)] or [{}]
  runs, names = [], set()
  for grid_point in grid_points:
    for draw in draws:
      point = {**grid_point, **draw}
      for seed in sweep.seeds:
        name = f"{point_name(point)},seed={seed}" if point else f"seed={seed}"
        if name in names:
          raise SweepError(f"two runs would be named {name!r} (repeated values?)")
        names.add(name)
        runs.append(Run(name, point.get("flagfile", sweep.bases[0]), point, seed, dict(sweep.flags),
                        dict(sweep.variants.get(point.get("variant"), {})), tuple(sweep.overlay)))
  return runs


def load_file(path: str, flag: str, name: str, kind: type, error: type[SweepError] = SweepError) -> tuple[str, Any]:
  """Runs a Python file (a sweep or a space) and returns its stem and its `name` (an instance
  of `kind`); `error` (one line) if it is missing, fails, or defines no such thing."""
  if not os.path.isfile(path):
    raise error(f"--{flag}={path!r}: no such file")
  stem = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"launch_{flag}_{stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SweepError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (user code)
    raise error(f"{path}: {type(e).__name__}: {e}") from None
  value = getattr(module, name, None)
  if not isinstance(value, kind):
    raise error(f"{path} must define {name} = {kind.__module__}.{kind.__name__}(...)")
  return stem, value


def load(path: str) -> tuple[str, Sweep]:
  """The sweep's name (its file name) and its SWEEP."""
  return load_file(path, "sweep", "SWEEP", Sweep)


def expand_flagfile(path: str, seen: tuple[str, ...] = ()) -> list[str]:
  """The lines of a flag file with its includes (`--flagfile=...`) expanded in place,
  comments and blank lines dropped. Paths are relative to the repository root."""
  full = os.path.join(REPO, path)
  if path in seen:
    raise SweepError(f"flag files include each other in a cycle: {' -> '.join(seen + (path,))}")
  if not os.path.isfile(full):
    raise SweepError(f"flag file {path!r} (included by {seen[-1] if seen else 'the sweep'}) does not exist")
  lines = []
  with open(full, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if line.startswith("--flagfile="):
        lines += expand_flagfile(line.split("=", 1)[1], seen + (path,))
      else:
        lines.append(line)
  return lines


def resolved_flagfile(run: Run) -> str:
  """The text of the run's own flag file: its base flag file expanded, then its overlays,
  then its flags."""
  read = " and ".join((run.base, *run.overlays))
  return "".join(line + "\n" for line in [
      f"# Sweep run {run.name}: {read} expanded, then the run's flags (later flags win).",
      *expand_flagfile(run.base), *(line for o in run.overlays for line in expand_flagfile(o)), *run.args()])
