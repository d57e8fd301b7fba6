"""JAX's persistent compilation cache, on by default: a second run of the same flag file
loads its compiled steps from disk instead of compiling them again.

The folder is `--compilation_cache_dir` (default ~/.cache/nets/jax; empty: off). A
JAX_COMPILATION_CACHE_DIR in the environment wins over the default, not over the flag.
"""

from __future__ import annotations

import os

from absl import flags

DEFAULT_DIR = os.path.join("~", ".cache", "nets", "jax")

flags.DEFINE_string("compilation_cache_dir", DEFAULT_DIR, "Persistent XLA compilation cache (empty: off).")


def enable(values: flags.FlagValues = flags.FLAGS) -> str | None:
  """Points JAX's compilation cache at the flag's folder; returns the folder (None: off)."""
  import jax  # pylint: disable=g-import-not-at-top
  path = values.compilation_cache_dir
  if not values["compilation_cache_dir"].present and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not path:
    return None
  path = os.path.expanduser(path)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small steps count too
  return path
