"""Regularised evolution (Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search") as an Optuna sampler.

The population is the last `population_size` finished trials in the order they were created:
each new trial ages it, and the oldest leaves (not the worst: that is the regularisation).
Until the population is full, trials are random. Then a tournament of `sample_size` members
drawn at random picks the best as the parent, and the child is the parent with exactly one of
its choices changed to another value. Choices the change brings into being (a fourth layer's
width when the layers go from 3 to 4) are drawn at random; choices it removes are dropped.

The population is read from the study's storage at each trial, so the sampler keeps no state
of its own: any number of workers share one evolution, and a search killed and started again
goes on from where it stopped. Single-objective studies only.
"""

from __future__ import annotations

import math
import random as random_lib
from typing import Any, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

PARENT = "evolution:parent"  # a child's system attributes: its parent's trial number,
MUTATED = "evolution:mutated"  # and the name of the choice its mutation changed


class RegularizedEvolutionSampler(optuna.samplers.BaseSampler):
  """Population P (`population_size`), tournament sample S (`sample_size`); see the module."""

  def __init__(self, population_size: int = 20, sample_size: int = 5, seed: int | None = None):
    if population_size < 2 or not 1 <= sample_size <= population_size:
      raise ValueError(f"regularised evolution needs population_size >= 2 and 1 <= sample_size <= population_size; "
                       f"got P={population_size}, S={sample_size}")
    self.population_size, self.sample_size = population_size, sample_size
    self._rng = random_lib.Random(seed)
    self._random = optuna.samplers.RandomSampler(seed=seed)

  def reseed_rng(self) -> None:
    self._rng.seed()
    self._random.reseed_rng()

  # Every choice is made one at a time (define-by-run): no joint search space.
  def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
    return {}

  def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                      search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
    return {}

  def population(self, study: optuna.Study) -> list[FrozenTrial]:
    """The last `population_size` completed trials, oldest first."""
    done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)  # pylint: disable=protected-access
    return sorted(done, key=lambda t: t.number)[-self.population_size:]

  def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
    if len(study.directions) > 1:
      raise ValueError("regularised evolution optimises one objective; use tpe or nsga2 for several")
    population = self.population(study)
    if len(population) < self.population_size or trial.params:  # still random; or an enqueued trial
      return
    tournament = self._rng.sample(population, self.sample_size)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    parent = (max if maximize else min)(tournament, key=lambda t: t.value)
    mutable = [name for name, d in parent.distributions.items() if _size(d) > 1]
    if not mutable:
      return
    chosen = {PARENT: parent.number, MUTATED: self._rng.choice(mutable)}
    for key, value in chosen.items():  # stored, and in the trial Optuna holds while sampling
      study._storage.set_trial_system_attr(trial._trial_id, key, value)  # pylint: disable=protected-access
      trial.system_attrs[key] = value

  def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                         param_distribution: BaseDistribution) -> Any:
    parent_number = trial.system_attrs.get(PARENT)
    if parent_number is None:
      return self._random.sample_independent(study, trial, param_name, param_distribution)
    parent = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(  # pylint: disable=protected-access
        study._study_id, parent_number))  # pylint: disable=protected-access
    if param_name == trial.system_attrs[MUTATED]:
      return mutate(self._rng, param_distribution, parent.params[param_name])
    if param_name in parent.params and param_distribution._contains(  # pylint: disable=protected-access
        param_distribution.to_internal_repr(parent.params[param_name])):
      return parent.params[param_name]
    return self._random.sample_independent(study, trial, param_name, param_distribution)


def _size(d: BaseDistribution) -> float:
  """How many values a distribution has (floats: infinitely many unless low == high)."""
  if isinstance(d, CategoricalDistribution):
    return len(d.choices)
  if isinstance(d, IntDistribution):
    return (d.high - d.low) // d.step + 1
  return math.inf if d.high > d.low else 1


def mutate(rng: random_lib.Random, d: BaseDistribution, value: Any) -> Any:
  """Another value of the distribution than `value`, drawn uniformly (log-uniformly on a log
  range)."""
  if isinstance(d, CategoricalDistribution):
    return rng.choice([c for c in d.choices if c != value])
  if isinstance(d, IntDistribution):
    others: Sequence[int] = [v for v in range(d.low, d.high + 1, d.step) if v != value]
    if d.log:  # weight each by the width of its share of the log range
      weights = [math.log(v + 0.5) - math.log(max(v - 0.5, 0.5)) for v in others]
      return rng.choices(others, weights)[0]
    return rng.choice(others)
  while True:
    new = (math.exp(rng.uniform(math.log(d.low), math.log(d.high))) if d.log else rng.uniform(d.low, d.high))
    if new != value:
      return new
