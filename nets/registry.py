"""Models are found by name; their hyperparameters are their dataclass fields."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

import flax.linen as nn

T = TypeVar("T", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}

# Fields every Flax module has that are not hyperparameters.
_NOT_HPARAMS = ("parent", "name")


def register(name: str) -> Callable[[T], T]:
  """Class decorator: makes a Flax module constructible as `create(name, ...)`."""

  def wrap(cls: T) -> T:
    if name in _MODELS and _MODELS[name] is not cls:
      raise ValueError(f"model name {name!r} is registered twice")
    _MODELS[name] = cls
    return cls

  return wrap


def names() -> list[str]:
  return sorted(_MODELS)


def get(name: str) -> type[nn.Module]:
  try:
    return _MODELS[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}") from None


def hparams(name: str) -> dict[str, dataclasses.Field]:
  """The hyperparameters of a model: its dataclass fields, in declaration order."""
  return {f.name: f for f in dataclasses.fields(get(name)) if f.name not in _NOT_HPARAMS}


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds model `name`; unknown hyperparameters are an error that lists the known ones."""
  known = hparams(name)
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    raise ValueError(f"model {name!r} has no hyperparameter(s) {unknown}; it has {list(known)}")
  return get(name)(**kwargs)
