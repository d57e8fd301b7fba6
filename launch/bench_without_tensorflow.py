"""`experiments.bench` for a char_text flag file on a machine without TensorFlow and TFDS.

Accelerator images often carry JAX, Flax and Optax but not TensorFlow, and may not reach a
package index (the GPU machine of this project's H200 figures: README, Benchmarks). This
stubs the `tensorflow` and `tensorflow_datasets` modules so that `experiments` imports, and
replaces `data.load` by a NumPy reading of the text file, split as the `char_text` builder
splits it (first 90% train, last 10% validation, the same vocabulary). The model, step,
feed, parallelism and timing are the real `experiments.bench`'s:

    PYTHONPATH=. python launch/bench_without_tensorflow.py TEXT_PATH \\
        --flagfile=experiments/flags/shakespeare_char_gpt.flags --dtype=bfloat16 --bench.matmul_size=8192

Only char_text runs work this way; where TensorFlow is installed, use `experiments.bench`.
"""
import importlib.machinery
import sys
import types


class _Meta(type):  # any attribute of a stub (a class, so that builders can subclass it) is a stub
  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Any


class _Any(metaclass=_Meta):
  def __init__(self, *a, **k):
    pass

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Any

  def __call__(self, *a, **k):
    return _Any()


class _Module(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Any


for name in ("tensorflow", "tensorflow_datasets"):
  if name in sys.modules:
    raise SystemExit(f"{name} is already imported")
  m = _Module(name)
  m.__file__ = f"/nonexistent/{name}/__init__.py"
  m.__spec__ = importlib.machinery.ModuleSpec(name, None)  # (JAX's compilation cache looks at modules' specs)
  sys.modules[name] = m

TEXT_PATH = sys.argv.pop(1)

from experiments import data  # noqa: E402
from experiments.datasets import char_text  # noqa: E402


def load(config):
  text = data.Text(char_text.splits(char_text.read_text(TEXT_PATH)))
  return data.sequence_source(config, None, text)


data.load = load

from experiments import cli  # noqa: E402
from experiments.bench import __main__ as command  # noqa: E402

if __name__ == "__main__":
  cli.run(command.main, command.__doc__)
