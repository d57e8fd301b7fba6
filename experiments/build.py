"""A run's pieces, built from its config and its data: model, objective, optimizer, the
function that calls the model, and the initial train state; and a trained run restored.

Model hyperparameters the flags leave unset are taken from the data: `num_outputs`
(classes or regression targets), `vocab_size` (plus the objective's extra tokens, e.g.
BERT's mask token), `max_len` (the longest sequence of the example batch), the data's shape
for generative models (`data_shape`, `data_dim`, `image_size`, `channels`) and a GAN
discriminator's `pack` (the objective's). The objective gets `vocab_size` and `data_shape`
where it has them. An objective with `param_groups` (a GAN's "generator" and
"discriminator") gets one optimizer per group, keyed by the top-level parameter names, in
one optimizer state. `--freeze`d parameters get zero updates (`experiments.finetune`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

import nets
from nets import federated
from experiments import checkpoint, data, finetune, optim, runtime
from experiments.runtime import rewrite
from experiments import config as config_lib
from experiments.config import Config, ConfigError


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: the step count, parameters, other model variables
  (e.g. batch statistics) and the optimizer state."""

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  ema_params: Any = None  # with --ema_decay: the parameters' exponential moving average
  fed: Any = None  # with --fed.algorithm=scaffold: the server's and every client's control variates


class Built(NamedTuple):
  model: nn.Module
  objective: nets.objectives.Objective
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  call: Callable[..., Any]  # model.apply as the run computes it (model_call)


def _model_hparams(config: Config, source: data.Source, objective: Any) -> dict[str, Any]:
  """The model's hyperparameters: the flags', then the data's for those left unset."""
  example, vocab_size = source.example, source.tokenizer.size if source.tokenizer else None
  data_shape = tuple(int(d) for d in example["x"].shape[1:])
  hparams = dict(config.model_hparams)
  fields = nets.hparams(config.model)
  if "num_outputs" in fields and "num_outputs" not in hparams:
    if config.objective == "classification" and source.num_classes:
      hparams["num_outputs"] = source.num_classes
    elif config.objective == "regression":
      hparams["num_outputs"] = int(np.prod(example["y"].shape[1:]))
  if "vocab_size" in fields and "vocab_size" not in hparams:
    if not vocab_size:
      raise ConfigError(f"--model={config.model} reads token ids, but --dataset={config.dataset} has no "
                        f"vocabulary; set --{config.model}.vocab_size")
    hparams["vocab_size"] = vocab_size + getattr(objective, "extra_tokens", 0)
  if "max_len" in fields and not hparams.get("max_len"):
    hparams["max_len"] = max((v.shape[1] for k, v in example.items() if k in ("x", "y") and v.ndim >= 2),
                             default=0)
  from_data = {"data_shape": data_shape, "data_dim": data_shape[-1] if data_shape else 1,
               "pack": getattr(objective, "pack", 1)}  # PacGAN's discriminator reads --gan.pack samples at once
  if len(data_shape) == 3:  # images
    from_data.update(image_size=data_shape[0], channels=data_shape[-1])
  for name, value in from_data.items():
    if name in fields and name not in hparams:
      hparams[name] = value
  return hparams


def _cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating-point array of `tree` as `dtype`; other leaves unchanged."""
  def cast(x):
    return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def model_call(model: nn.Module, config: Config, platform: str) -> Callable[..., Any]:
  """`model.apply` as the run computes it (`nets.apply.Apply` calls it):
  - `--dtype=bfloat16`: parameters and inputs cast to bfloat16, every floating-point output
    (and updated model state) cast back to float32, so parameters, gradients, optimizer
    state and losses stay float32 (mixed precision);
  - some operations computed another way on `platform` (`experiments.runtime.rules`: on the
    CPU convolutions and dense layers on rows; bfloat16 products with --matmul_dtype), for
    the same values."""
  call = rewrite.rewrite(model.apply, runtime.rules(platform, config.matmul_dtype))
  if config.dtype == "float32":
    return call
  dtype = jnp.dtype(config.dtype)

  def mixed(variables, *args, **kwargs):
    variables = {**variables, "params": _cast_floating(variables["params"], dtype)}
    return _cast_floating(call(variables, *_cast_floating(args, dtype), **_cast_floating(kwargs, dtype)),
                          jnp.float32)

  return mixed


def build(config: Config, source: data.Source, platform: str | None = None) -> Built:
  """The model, objective, optimizer, schedule and model call of `config` on the loaded data
  `source` (module docstring), for devices of `platform` (default: JAX's default backend)."""
  data_shape = tuple(int(d) for d in source.example["x"].shape[1:])
  fields = {f.name for f in dataclasses.fields(nets.objectives.get(config.objective))}
  from_data = {"vocab_size": source.tokenizer.size if source.tokenizer else 0, "data_shape": data_shape}
  objective = nets.objectives.create(config.objective, **config.objective_hparams,
                                     **{k: v for k, v in from_data.items() if k in fields})
  try:
    model = nets.create(config.model, **_model_hparams(config, source, objective))
  except ValueError as e:
    raise ConfigError(f"--model={config.model}: {e}") from e
  schedule = optim.schedule(config.schedule, config.learning_rate, config.steps, config.warmup_steps,
                            config.min_learning_rate)

  def optimizer(lr):
    return optim.optimizer(config.optimizer, lr, momentum=config.momentum, b1=config.b1, b2=config.b2,
                           eps=config.eps, weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm,
                           decay_weights_only=config.decay_weights_only)

  groups = getattr(objective, "param_groups", ())
  if groups:
    d_schedule = optim.schedule(config.schedule, config.discriminator_learning_rate or config.learning_rate,
                                config.steps, config.warmup_steps, config.min_learning_rate)
    txs = {g: optimizer(d_schedule if g == "discriminator" else schedule) for g in groups}
    tx = optax.multi_transform(txs, lambda params: {k: k for k in params})
  else:
    tx = optimizer(schedule)
  if config.freeze:
    tx = finetune.freeze(tx, finetune.split_paths(config.freeze))
  call = model_call(model, config, platform or jax.default_backend())
  return Built(model, objective, tx, schedule, call)


def init_state(model: nn.Module, tx: optax.GradientTransformation, example: dict[str, np.ndarray],
               rng: jax.Array, sharding: Any = None, ema: bool = False, scaffold_clients: int = 0) -> TrainState:
  """Parameters and optimizer state (and, with `ema`, the parameters' moving average, which
  starts at them; with `scaffold_clients`, SCAFFOLD's zero control variates for that many
  clients), initialised directly in their `sharding` (a pytree like the state, or None: the
  default device)."""

  def init(rng):
    variables = model.init({"params": rng, "dropout": rng}, jnp.asarray(example["x"]), train=False)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                      opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                      fed=federated.scaffold_init(params, scaffold_clients) if scaffold_clients else None)

  return jax.jit(init, out_shardings=sharding)(rng)


def scaffold_clients(config: Config) -> int:
  """The clients whose control variates the state keeps: --fed.clients under SCAFFOLD, else 0."""
  return config.fed.clients if config.fed.on and config.fed.algorithm == "scaffold" else 0


def count_params(params: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


class Restored(NamedTuple):
  config: Config
  source: data.Source
  model: nn.Module
  objective: nets.objectives.Objective
  params: Any
  model_state: Any  # other variables, e.g. batch statistics
  call: Callable[..., Any]  # model.apply as the run computed it
  step: int = 0  # the checkpoint's


def restore(workdir: str | os.PathLike, step: int | None = None, config: Config | None = None) -> Restored:
  """A run's config, data, model, objective, parameters and other model variables (its latest
  checkpoint, or `step`'s). `config` replaces the run's own (workdir/flags.flags), e.g. to
  read another split; it must build the same model."""
  runtime.prepare_process()
  config = config or config_lib.from_workdir(workdir)
  directory = epath.Path(workdir) / "checkpoints"
  saved = checkpoint.saved_steps(directory)
  if not saved:
    raise ConfigError(f"no checkpoint in {directory}")
  if step is not None and step not in saved:
    raise ConfigError(f"--step={step}: no checkpoint of that step in {directory} (saved: {', '.join(map(str, saved))})")
  source = data.load(config)
  built = build(config, source)
  ckpts = checkpoint.Checkpoints(directory)
  like = jax.eval_shape(lambda: init_state(built.model, built.tx, source.example, jax.random.key(0),
                                           ema=bool(config.ema_decay), scaffold_clients=scaffold_clients(config)))
  if step is None:  # the newest that can be read (a training run moves unreadable ones aside; this does not)
    state, step = ckpts.restore_intact(like, move_aside=False)
  else:
    state = ckpts.restore(like, step)
  ckpts.close()
  params = state.ema_params if state.ema_params is not None else state.params  # (the average, when kept)
  return Restored(config, source, built.model, built.objective, params, state.model_state, built.call, step)
