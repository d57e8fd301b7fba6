"""Every `python -m` command in the fenced blocks of README.md and docs/*.md names a module that
exists, flag files and sweep files that exist, and flags its command defines; the training and
benchmark commands' flags also make a valid run configuration (flag files composed)."""

import functools
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags

from conftest import ROOT
from experiments import config as config_lib

DOCUMENTS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
PATH_FLAGS = ("flagfile", "sweep")  # flags whose value is a file of this repository
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


@functools.lru_cache(maxsize=None)
def _defined_flags(module: str) -> frozenset[str]:
  """The flag names `python -m MODULE --helpfull` lists."""
  proc = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  names = re.findall(r"^\s+(?:-\S+,)?--(?:\[no\])?([\w.]+):", proc.stdout, re.M)
  assert names, f"{module} --helpfull listed no flags:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
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
  if module in ("experiments.run", "experiments.bench"):  # the run it describes is a valid one
    monkeypatch.chdir(ROOT)  # flag files include each other by repository-relative paths
    values = flags.FlagValues()
    config_lib.define_flags(values)
    chosen = [a for a in args if "$" not in a and not a.startswith("--workdir")]
    values(["prog", *chosen], known_only=True)
    config_lib.from_flags(values)
