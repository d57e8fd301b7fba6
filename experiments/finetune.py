"""Fine-tuning: a new run that starts from another run's parameters.

`--init_from=WORKDIR[:STEP]` loads a trained run's parameters and other model variables
(batch statistics; the moving average of the parameters where that run kept one) from its
latest checkpoint or STEP's, not its optimizer state or step: the new run starts at step 0
with a fresh optimizer. `--init_from=FOLDER` loads a Hugging Face GPT-2 checkpoint
(`config.json` + `model.safetensors`, `nets.gpt2`) into `--model=gpt`.

Parameter paths name subtrees by their keys joined with "/" (`head`, `block3/mlp`,
`discriminator/Conv_0`); a path matches the subtree whose leading keys it names, and `*`
matches within one key (`block*/attention`). `--reinit=PATHS` keeps those subtrees as the new
run initialises them (a new classifier for another number of classes); every other array
must be in the checkpoint with the same shape. `--freeze=PATHS` trains everything else:
the frozen subtrees' updates are zero (`optax.set_to_zero` under `optax.multi_transform`),
so they keep their loaded values, weight decay included.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

import jax
import numpy as np
import optax
from etils import epath

from experiments import checkpoint
from nets import gpt2
from experiments.config import Config, ConfigError


def split_paths(text: str) -> list[str]:
  return [p.strip() for p in text.split(",") if p.strip()]


def _key(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flat(tree: Any) -> dict[str, Any]:
  """The leaves of `tree` by their "/"-joined paths."""
  return {"/".join(_key(e) for e in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def matches(pattern: str, path: str) -> bool:
  """Whether `path` lies in the subtree `pattern` names (its leading keys; `*` within a key)."""
  want, have = pattern.split("/"), path.split("/")
  return len(want) <= len(have) and all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have))


def _selected(path: str, patterns: list[str]) -> bool:
  return any(matches(p, path) for p in patterns)


def check_paths(flag: str, patterns: list[str], params: Any) -> None:
  """One line for a path of `flag` that names no parameter of `params` (arrays or shapes)."""
  names = list(flat(params))
  for p in patterns:
    if not any(matches(p, n) for n in names):
      top = sorted({n.split("/")[0] for n in names})
      raise ConfigError(f"--{flag}={p}: the model has no parameters under {p!r}; its top-level names are "
                        + ", ".join(top))


def freeze(tx: optax.GradientTransformation, patterns: list[str]) -> optax.GradientTransformation:
  """`tx` for every parameter but those under `patterns`, whose updates are zero."""
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if _selected("/".join(_key(e) for e in path), patterns) else "trained", params)
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def parse(spec: str) -> tuple[str, int | None]:
  """WORKDIR[:STEP] -> (WORKDIR, STEP or None)."""
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit() and head:
    return head, int(tail)
  return spec, None


def is_gpt2_folder(path: str | os.PathLike) -> bool:
  folder = epath.Path(path)
  return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def check(config: Config) -> None:
  """--init_from names a run with a checkpoint (STEP's, if given) or a GPT-2 folder: one line
  otherwise, before any data is read."""
  path, step = parse(config.init_from)
  folder = epath.Path(os.path.expanduser(path))
  flag = f"--init_from={config.init_from}"
  if not folder.exists():
    raise ConfigError(f"{flag}: {folder} does not exist")
  if (folder / "config.json").exists():
    if not (folder / "model.safetensors").exists():
      raise ConfigError(f"{flag}: {folder} has config.json but no model.safetensors (a Hugging Face GPT-2 "
                        "checkpoint holds both)")
    if step is not None:
      raise ConfigError(f"{flag}: a Hugging Face checkpoint has no steps; name the folder alone")
    if config.model != "gpt":
      raise ConfigError(f"{flag} is a GPT-2 checkpoint: it loads into --model=gpt, not --model={config.model}")
    return
  ckpts = folder / "checkpoints"
  saved = checkpoint.saved_steps(ckpts)
  if not (folder / "flags.flags").exists() or not saved:
    raise ConfigError(f"{flag}: {folder} is neither a run with a checkpoint (flags.flags and checkpoints/) nor a "
                      "Hugging Face GPT-2 folder (config.json and model.safetensors)")
  if step is not None and step not in saved:
    raise ConfigError(f"{flag}: no checkpoint of step {step} in {ckpts} (saved: {', '.join(map(str, saved))})")


def load(config: Config, model: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
  """The parameters and model variables --init_from names, as flat {path: host array}, and
  where they came from (for the log). A GPT-2 checkpoint's hyperparameters must be `model`'s."""
  path, step = parse(config.init_from)
  folder = epath.Path(os.path.expanduser(path))
  if is_gpt2_folder(folder):
    try:
      hparams, params = gpt2.load(os.fspath(folder))
    except ValueError as e:
      raise ConfigError(f"--init_from={config.init_from}: {e}") from None
    for name, value in hparams.items():
      if getattr(model, name) != value:
        hint = " (GPT-2's tokens: --tokenizer=gpt2:FOLDER)" if name == "vocab_size" else ""
        raise ConfigError(f"--init_from={config.init_from}: the checkpoint's {name} is {value}, the run's "
                          f"--gpt.{name} {getattr(model, name)}{hint}")
    return flat(params), {}, f"the GPT-2 checkpoint in {folder}"
  ckpts = checkpoint.Checkpoints(folder / "checkpoints")
  try:
    step = ckpts.latest_step() if step is None else step
    saved = ckpts.restore_raw(step)
  finally:
    ckpts.close()
  params = saved.get("ema_params") or saved["params"]  # the moving average, where the run kept one
  return flat(params), flat(saved.get("model_state") or {}), f"step {step} of {folder}"


def merge(fresh: Any, loaded: dict[str, Any], reinit: list[str], what: str) -> tuple[Any, list[str]]:
  """`fresh` (a tree of arrays) with every array not under `reinit` replaced by `loaded`'s of
  the same path; ConfigError naming those missing or of another shape. Also returns the loaded
  paths the new model does not use."""
  leaves = flat(fresh)
  wrong = []
  for path, leaf in leaves.items():
    if _selected(path, reinit):
      continue
    if path not in loaded:
      wrong.append(f"{path} not in the checkpoint")
    elif tuple(np.shape(loaded[path])) != tuple(leaf.shape):
      wrong.append(f"{path} {tuple(np.shape(loaded[path]))} saved, {tuple(leaf.shape)} here")
  if wrong:
    raise ConfigError(f"--init_from: {what} does not fit the new model ({'; '.join(wrong[:4])}"
                      f"{'; ...' if len(wrong) > 4 else ''}): name those subtrees in --reinit to initialise them "
                      "afresh, or match the model's flags")
  new = {p: leaf if _selected(p, reinit) else np.asarray(loaded[p], leaf.dtype) for p, leaf in leaves.items()}
  unused = sorted(set(loaded) - set(leaves))
  treedef = jax.tree_util.tree_structure(fresh)
  return jax.tree_util.tree_unflatten(treedef, [new[p] for p in leaves]), unused


def initialise(config: Config, state: Any, model: Any, tx: optax.GradientTransformation,
               sharding: Any) -> tuple[Any, str]:
  """The new run's first state: `state` (freshly initialised) with --init_from's parameters
  and model variables, the optimizer state and moving average started from them; and a line
  for the log saying what was loaded."""
  params, model_state, what = load(config, model)
  reinit = split_paths(config.reinit)
  new_params, unused = merge(state.params, params, reinit, what)
  # (a model variable such as a batch statistic follows its layer: --reinit paths name layers)
  new_state_vars, _ = merge(state.model_state, model_state, [f"*/{p}" for p in reinit], what)

  def start(params, model_state):
    return state.replace(params=params, model_state=model_state, opt_state=tx.init(params),
                         ema_params=None if state.ema_params is None else jax.tree.map(lambda x: x, params))

  new = jax.jit(start, out_shardings=sharding)(new_params, new_state_vars)
  return new, (f"Initialised from {what}" + (f"; afresh: {', '.join(reinit)}" if reinit else "")
               + (f"; frozen: {config.freeze}" if config.freeze else "")
               + (f"; not used: {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}" if unused else ""))

