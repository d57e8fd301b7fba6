"""JAX's persistent compilation cache, on by default: a second run of the same flag file
loads its compiled steps from disk instead of compiling them again.

The folder is `--runtime.compilation_cache_dir` (default ~/.cache/nets/jax; empty: off). A
JAX_COMPILATION_CACHE_DIR in the environment wins over the default, not over another folder.
"""

from __future__ import annotations

import os

DEFAULT_DIR = os.path.join("~", ".cache", "nets", "jax")


def enable(path: str = DEFAULT_DIR) -> str | None:
  """Points JAX's compilation cache at `path`; returns the folder (None: off)."""
  import jax  # pylint: disable=g-import-not-at-top
  if path == DEFAULT_DIR and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not path:
    return None
  path = os.path.expanduser(path)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small steps count too
  return path
