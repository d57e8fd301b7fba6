"""What every command shares: flag parsing, `--help`, and bad input as one line.

`run(main, doc)` is `absl.app.run(main)` with three differences:
- `--help` (`-h`, `--helpshort`) prints the command's own flags, grouped (a training
  command's: data, model, objective, optimizer, loop, precision, then each `--SECTION.*`),
  with the values they would take (after any `--flagfile`), and exits 0; `--helpfull` is
  absl's, every flag of every library;
- a bad flag (unknown, unparsable, out of range) prints `error: ...` in one line and exits 2;
- so does a `ConfigError` raised by `main`: bad input found before any compute.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import textwrap
from typing import Any, Callable, NoReturn

from absl import app, flags, logging

import nets
from experiments import config as config_lib

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort")
_WIDTH = 100
_OURS = ("experiments", "launch")  # flags defined in these packages are the commands' own


def fail(message: Any) -> NoReturn:
  """Exits 2 after one line on stderr: `error: MESSAGE`."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def run(main: Callable[[], Any], doc: str, values: flags.FlagValues = flags.FLAGS) -> None:
  """Parses the flags and calls `main()` (module docstring)."""

  def parse(argv: list[str]) -> list[str]:
    if any(a in HELP_ARGS for a in argv[1:]):
      try:  # for the values a flag file sets, and which model's and objective's flags to show
        values([a for a in argv if a not in HELP_ARGS], known_only=True)
      except flags.Error:
        pass
      print(help_text(values, doc))
      sys.exit(0)
    try:
      rest = values(argv)
    except flags.Error as e:
      fail(e)
    if len(rest) > 1:
      fail(f"unexpected arguments: {' '.join(rest[1:])} (flags are --name=value)")
    return rest

  def start(argv: list[str]) -> None:
    del argv
    if not values["verbosity"].present:  # our progress lines, not every library's INFO logs
      logging.set_verbosity(logging.WARNING)
    try:
      main()
    except config_lib.ConfigError as e:
      fail(e)
    except KeyboardInterrupt:  # Ctrl-C where nothing is left to save: one line, as a shell reports it
      print("error: stopped by Ctrl-C", file=sys.stderr, flush=True)
      sys.exit(130)

  app.run(start, flags_parser=parse)


def _text(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  if isinstance(value, bool):
    return str(value).lower()
  return "" if value is None else str(value)


def _wrap(text: str, indent: str = "      ") -> str:
  return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent=indent)


def _line(flag: flags.Flag) -> str:
  text = flag.help
  choices = getattr(flag.parser, "enum_values", None)
  if choices:
    text = text.split(">: ", 1)[-1] + f" One of: {', '.join(choices)}."  # (absl's own form: "<a|b>: help")
  return f"  --{flag.name}={_text(flag.value)}\n{_wrap(text)}"


def _hparam_lines(values: flags.FlagValues, name: str, fields: dict[str, dataclasses.Field]) -> list[str]:
  """One line per hyperparameter: its value (set, or the default)."""
  lines = []
  for field_name, f in fields.items():
    value = values[f"{name}.{field_name}"].value
    lines.append(f"  --{name}.{field_name}={_text(f.default if value is None else value)}")
  return lines


def _config_help(values: flags.FlagValues) -> tuple[list[str], set[str]]:
  """The training flags, grouped, and their names."""
  out, names = [], set()
  groups: dict[str, list[dataclasses.Field]] = {}
  for f in config_lib.plain_fields():
    groups.setdefault(f.metadata["group"], []).append(f)
  chosen = {"Model": ("model", values["model"].value), "Objective": ("objective", values["objective"].value)}
  families = {(kind, name): fields for kind, name, fields in config_lib.hparam_families()}
  for group, fields in groups.items():
    out.append(f"\n{group}:")
    out += [_line(values[f.name]) for f in fields]
    names.update(f.name for f in fields)
    if group in chosen:
      kind, name = chosen[group]
      where = inspect.getsourcefile(nets.get(name) if kind == "model" else nets.objectives.get(name))
      where = os.path.relpath(where, os.path.dirname(os.path.dirname(nets.__file__)))
      out.append(f"\n{group} hyperparameters of --{kind}={name}: their values; {where} says what each does.")
      out.append(_wrap(f"Another {kind}'s: --{kind}=NAME --help, NAME one of "
                       f"{', '.join(n for k, n in families if k == kind and n != name)}.", "  "))
      out += _hparam_lines(values, name, families[(kind, name)]) or ["  (none)"]
  names.update(f"{name}.{field}" for (_, name), fields in families.items() for field in fields)
  for cls in config_lib.SECTIONS:
    out.append(f"\n--{cls.NAME}.*: {(cls.__doc__ or '').strip()}")
    for f in dataclasses.fields(cls):
      out.append(_line(values[f"{cls.NAME}.{f.name}"]))
      names.add(f"{cls.NAME}.{f.name}")
  return out, names


def _ours(module: str) -> bool:
  if module.startswith(_OURS):
    return True
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return module.endswith(".py") and os.path.abspath(module).startswith(root)


def help_text(values: flags.FlagValues, doc: str) -> str:
  """A command's usage (its docstring's first paragraph) and its own flags, grouped."""
  out = ["\n\n".join(doc.strip().split("\n\n")[:2])]
  shown: set[str] = set()
  if "model" in values and "dataset" in values:  # a training command
    lines, shown = _config_help(values)
    out += lines
  rest: dict[str, list[flags.Flag]] = {}
  for module, module_flags in values.flags_by_module_dict().items():
    if not _ours(module):
      continue
    for flag in module_flags:
      if flag.name not in shown:
        shown.add(flag.name)
        prefix = flag.name.split(".")[0] if "." in flag.name else ""
        rest.setdefault(prefix, []).append(flag)
  for prefix, group in sorted(rest.items()):
    out.append(f"\n--{prefix}.*:" if prefix else "\nThis command:")
    out += [_line(flag) for flag in group]
  out.append("\nEvery flag, those of the libraries too: --helpfull")
  return "\n".join(out)
