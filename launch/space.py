"""What a search space is: a base flag file, fixed flags, and a function that chooses the rest.

A space file (`launch/spaces/NAME.py`) defines `SPACE`:

    def architecture(choose):
      layers = choose.int("layers", 1, 4)            # conditional structure: the choices
      return {                                       # below depend on this one
          "cnn.features": [choose.categorical(f"channels_{i}", (8, 16, 32)) for i in range(layers)],
          "cnn.kernel_size": [choose.categorical(f"kernel_{i}", (3, 5, 7)) for i in range(layers)],
          "learning_rate": choose.float("learning_rate", 1e-3, 3e-2, log=True)}

    SPACE = Space(base="experiments/flags/mnist1d_cnn.flags",
                  overlay=["experiments/flags/mnist1d_validation.flags"],
                  flags={"steps": 2000}, choose=architecture, max_params=5210)

`choose` answers `categorical(name, values)`, `int(name, low, high, step=1, log=False)` and
`float(name, low, high, log=False)`; during a search it is Optuna's trial (define-by-run, so
a choice may depend on earlier ones), elsewhere a seeded random chooser. The function
returns flags (without the dashes) to set after the base file, its overlays and `flags`.

Trials are chosen on validation data only: the space's runs must have a validation split
(`--validation_fraction`, or an evaluation split that is not a test split), and a search
runs them with `--eval_split=` empty, so the test split is never evaluated during a search.
`check(space)` builds the config of many samples (every value of every categorical choice,
both ends of every range) before any trial runs: an unknown flag or an invalid value is one
line naming the choice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random as random_lib
from typing import Any, Callable, Mapping, Sequence

from launch.spec import REPO, SweepError, expand_flagfile, format_value, load_file


class SpaceError(SweepError):
  """A bad space file or value, found before any trial runs."""


@dataclasses.dataclass(frozen=True)
class Space:
  base: str
  choose: Callable[[Any], Mapping[str, Any]]
  overlay: Sequence[str] = ()
  flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  metric: str = "val/accuracy"  # what a trial is scored by (a validation metric), at each evaluation too
  direction: str = "maximize"
  max_params: int = 0  # trials with more parameters are not trained (0: no limit)
  # The final retrain of the best trial (`launch.search --retrain`): flags set over the
  # trial's, e.g. more steps.
  retrain_flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for path in (self.base, *self.overlay):
      if not os.path.isfile(os.path.join(REPO, path)):
        raise SpaceError(f"flag file {path!r} does not exist")
    if not callable(self.choose):
      raise SpaceError("Space(choose=...) must be a function of the chooser returning flags")
    if self.direction not in ("maximize", "minimize"):
      raise SpaceError(f"Space(direction={self.direction!r}) must be maximize or minimize")
    if self.max_params < 0:
      raise SpaceError(f"Space(max_params={self.max_params}) must be >= 0 (0: no limit)")
    if not self.metric.startswith(("val/", "eval/")):
      raise SpaceError(f"Space(metric={self.metric!r}) must be a metric of the evaluations during training "
                       "(val/...: the validation split)")
    reserved = {"seed", "workdir", "flagfile", "eval_split"} & set(self.flags)
    if reserved:
      raise SpaceError(f"Space(flags=...) sets {sorted(reserved)}: the search sets those itself")

  def lines(self, choices: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> list[str]:
    """The flag lines of one trial: the base file and overlays expanded, the fixed flags, the
    chosen flags, then `extra` (later lines win)."""
    values = {**self.flags, **choices, **dict(extra)}
    return ([*expand_flagfile(self.base), *(line for o in self.overlay for line in expand_flagfile(o))]
            + [f"--{k}={format_value(v)}" for k, v in values.items()])


# --- choosers ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Distribution:
  """One choice as declared: categorical values, or an int/float range."""

  kind: str  # categorical, int, float
  values: tuple = ()
  low: float = 0
  high: float = 0
  step: int = 1
  log: bool = False


class RandomChooser:
  """Answers the chooser's calls with seeded random draws (or `forced` values by name), and
  records what it was asked: the choices and their distributions."""

  def __init__(self, rng: random_lib.Random, forced: Mapping[str, Any] | None = None):
    self.rng, self.forced = rng, dict(forced or {})
    self.params: dict[str, Any] = {}
    self.distributions: dict[str, Distribution] = {}

  def _take(self, name: str, distribution: Distribution, draw: Callable[[], Any]) -> Any:
    if name in self.params:
      raise SpaceError(f"the space chooses {name!r} twice in one sample: give each choice its own name")
    self.distributions[name] = distribution
    self.params[name] = self.forced[name] if name in self.forced else draw()
    return self.params[name]

  def categorical(self, name: str, values: Sequence[Any]) -> Any:
    values = tuple(values)
    if not values:
      raise SpaceError(f"choice {name!r} has no values")
    return self._take(name, Distribution("categorical", values), lambda: self.rng.choice(values))

  def int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:  # pylint: disable=redefined-builtin
    _check_range(name, low, high, log)
    def draw():
      if log:
        return min(high, max(low, round(math.exp(self.rng.uniform(math.log(low), math.log(high))))))
      return self.rng.randrange(low, high + 1, step)
    return self._take(name, Distribution("int", low=low, high=high, step=step, log=log), draw)

  def float(self, name: str, low: float, high: float, log: bool = False) -> float:  # pylint: disable=redefined-builtin
    _check_range(name, low, high, log)
    def draw():
      return math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)
    return self._take(name, Distribution("float", low=low, high=high, log=log), draw)


def _check_range(name: str, low: float, high: float, log: bool) -> None:
  if not low <= high:
    raise SpaceError(f"choice {name!r}: low {low} exceeds high {high}")
  if log and low <= 0:
    raise SpaceError(f"choice {name!r}: a log range needs low > 0 (got {low})")


class OptunaChooser:
  """The chooser during a search: Optuna's trial, whose sampler makes each choice."""

  def __init__(self, trial: Any):
    self.trial = trial

  def categorical(self, name: str, values: Sequence[Any]) -> Any:
    values = tuple(values)
    # Optuna stores categorical values as they are; lists (a layer's widths) become tuples.
    return self.trial.suggest_categorical(name, values)

  def int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:  # pylint: disable=redefined-builtin
    return self.trial.suggest_int(name, low, high, step=step, log=log)

  def float(self, name: str, low: float, high: float, log: bool = False) -> float:  # pylint: disable=redefined-builtin
    return self.trial.suggest_float(name, low, high, log=log)


def sample(space: Space, seed: int, forced: Mapping[str, Any] | None = None) -> tuple[dict, dict, dict]:
  """One random sample of the space: (its choices, their distributions, the flags it sets)."""
  chooser = RandomChooser(random_lib.Random(seed), forced)
  chosen = space.choose(chooser)
  if not isinstance(chosen, Mapping):
    raise SpaceError(f"the space's choose function returned {type(chosen).__name__}, not a dict of flags")
  return chooser.params, chooser.distributions, dict(chosen)


# --- checking ------------------------------------------------------------------------------------

def config_of(lines: Sequence[str]):
  """The validated experiments Config of a trial's flag lines (ConfigError or absl's
  flags.Error on bad input)."""
  from absl import flags  # pylint: disable=g-import-not-at-top  (imports nets, so JAX: only when checking)
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["search", *lines])
  return config_lib.from_flags(values)


def probes(space: Space, count: int = 64, seed: int = 0) -> list[dict[str, Any]]:
  """Forced values that, with random draws for the rest, reach every categorical value and
  both ends of every range of the choices asked (a first random pass finds them), then
  `count` plain random samples."""
  found: dict[str, Distribution] = {}
  for i in range(count):
    found.update(sample(space, seed + i)[1])
  forced = []
  for name, d in found.items():
    ends = d.values if d.kind == "categorical" else (d.low, d.high)
    forced += [{name: value} for value in ends]
  return forced + [{} for _ in range(count)]


def check(space: Space, count: int = 64, seed: int = 0) -> int:
  """Builds the config of `count` random samples and of every categorical value and range end;
  raises SpaceError (one line naming the choices) on the first that is invalid, or when the
  runs would not be chosen on validation data. Returns how many were checked."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top
  checked = 0
  for i, forced in enumerate(probes(space, count, seed)):
    params, _, chosen = sample(space, seed + 10_000 + i, forced)
    try:
      config = config_of(trial_lines(space, chosen))
    except (ConfigError, flags.Error) as e:
      what = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
      raise SpaceError(f"the space's sample ({what}) is not a valid run: {' '.join(str(e).split())}") from None
    if not config.validation_fraction and "test" in config.eval_split:
      raise SpaceError(f"the space's runs evaluate on --eval_split={config.eval_split} and have no validation split: "
                       "a search chooses on validation data only (set --validation_fraction, or evaluate on a "
                       "validation split)")
    checked += 1
  return checked


def trial_lines(space: Space, chosen: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> list[str]:
  """A search trial's flag lines: the space's, with the test split off (`--eval_split=` empty:
  never read) when a validation split is carved from training."""
  lines = space.lines(chosen, extra)
  fractions = [line.split("=", 1)[1] for line in lines if line.startswith("--validation_fraction=")]
  return lines + (["--eval_split="] if fractions and float(fractions[-1]) > 0 else [])


def load(path: str) -> tuple[str, Space]:
  """The space's name (its file name) and its SPACE."""
  return load_file(path, "space", "SPACE", Space, SpaceError)
