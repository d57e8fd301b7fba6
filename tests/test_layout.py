"""The layout's promises: dependencies point one way (launch -> experiments -> nets), and
nets/ imports neither absl nor TensorFlow."""

import ast
import glob
import os

import pytest

from conftest import ROOT

FORBIDDEN = {
    "nets": ("experiments", "launch", "absl", "tensorflow", "tensorflow_datasets"),
    "experiments": ("launch",),
}


def _imports(path: str) -> set[str]:
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module.split(".")[0])
  return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_upward(package):
  files = glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)
  assert files
  for path in files:
    bad = _imports(path) & set(FORBIDDEN[package])
    assert not bad, f"{os.path.relpath(path, ROOT)} imports {sorted(bad)}"
