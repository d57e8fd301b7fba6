"""Every `python -m` command in the fenced blocks of README.md and docs/*.md names a module that
exists, flag files and sweep files that exist, and flags its command defines; the training and
benchmark commands' flags also make a valid run configuration (flag files composed)."""

import ast
import functools
import glob
import importlib.util
import os
import shlex

import pytest
from absl import flags

from conftest import ROOT
from test_flags import NEEDS_WEIGHTS
from experiments import config as config_lib

DOCUMENTS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
PATH_FLAGS = ("flagfile", "sweep", "space")  # flags whose value is a file of this repository
NOT_ABSL = ("experiments.bench.table",)  # takes a positional file, no flags


def _commands(path: str) -> list[tuple[int, list[str]]]:
  """(line, argv from the module on) of every `python -m` command in the file's fenced blocks."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    lines = f.read().splitlines()
  found, fenced, pending, start = [], False, "", 0
  for number, line in enumerate(lines, start=1):
    if line.startswith("```"):
      fenced = not fenced
      continue
    if not fenced:
      continue
    if not pending:
      start = number
    if line.rstrip().endswith("\\"):  # continued on the next line
      pending += line.rstrip()[:-1] + " "
      continue
    text, pending = pending + line, ""
    try:
      words = shlex.split(text, comments=True)
    except ValueError:
      continue
    for i, word in enumerate(words[:-2]):
      if os.path.basename(word) in ("python", "python3") and words[i + 1] == "-m":
        argv = []
        for w in words[i + 2:]:
          if w in ("|", ";", "&&", ">", ">>", "2>&1"):
            break
          argv.append(w)
        found.append((start, argv))
  return found


CASES = [(f"{path}:{line}", argv) for path in DOCUMENTS for line, argv in _commands(path)]


# absl's own flags, which every command has.
ABSL_FLAGS = frozenset(flags.FLAGS) | {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok"}


@functools.lru_cache(maxsize=None)
def _defined_flags(module: str) -> frozenset[str]:
  """The flags `python -m MODULE` defines: the `DEFINE_*` calls in its source (a package's
  `__main__.py`), the run's flags where it defines them (`config.define_flags()`), and absl's."""
  spec = importlib.util.find_spec(module)
  path = spec.origin
  if spec.submodule_search_locations:  # a package: `python -m` runs its __main__
    path = os.path.join(os.path.dirname(path), "__main__.py")
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  names = set(ABSL_FLAGS)
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      if node.func.attr.startswith("DEFINE_") and node.args and isinstance(node.args[0], ast.Constant):
        names.add(node.args[0].value)
      elif node.func.attr == "define_flags" and getattr(node.func.value, "id", "") == "config_lib":
        values = flags.FlagValues()
        config_lib.define_flags(values)
        names.update(values)
  return frozenset(names)


def test_the_documents_hold_commands():
  modules = {argv[0] for _, argv in CASES}
  assert {"experiments.run", "experiments.sample", "experiments.bench", "launch.sweep"} <= modules, modules


@pytest.mark.parametrize("where,argv", CASES, ids=[c[0] for c in CASES])
def test_a_documented_command_names_what_exists(where, argv, monkeypatch):
  module, args = argv[0], argv[1:]
  assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
  if module in NOT_ABSL or not module.startswith(("experiments", "launch")):  # (venv, pytest: not ours)
    return
  defined = _defined_flags(module)
  for arg in args:
    if not arg.startswith("--"):
      continue
    name, _, value = arg[2:].partition("=")
    bare = name[2:] if name.startswith("no") and name[2:] in defined else name
    assert bare in defined, f"{where}: {module} has no flag --{name}"
    if name in PATH_FLAGS and "$" not in value:
      assert os.path.isfile(os.path.join(ROOT, value)), f"{where}: --{name}={value} does not exist"
  if any(weights in arg for arg in args for weights in NEEDS_WEIGHTS):
    return  # (its pretrained files are not here: tests/test_gpt2.py checks that file with a stand-in)
  if module in ("experiments.run", "experiments.bench"):  # the run it describes is a valid one
    monkeypatch.chdir(ROOT)  # flag files include each other by repository-relative paths
    values = flags.FlagValues()
    config_lib.define_flags(values)
    chosen = [a for a in args if "$" not in a and not a.startswith("--workdir")]
    values(["prog", *chosen], known_only=True)
    config_lib.from_flags(values)
