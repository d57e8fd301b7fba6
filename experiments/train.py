"""The training spine: one pure train step and one loop for every model family.

`train_step(state, batch, rng) -> (state, metrics)` differentiates the objective's mean
per-example loss, updates with Optax and reports batch means. Its randomness is
`fold_in(rng, state.step)`, so a resumed run draws what an uninterrupted one would.
`train_and_evaluate(config, workdir)` runs it under `experiments.parallel` with data from
`experiments.data`, logging, evaluation, orbax checkpoints, resume, SIGTERM and NaN guards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nets
from experiments import checkpoint, data, host_memory, logs, matmul_flops, optim, samples, threefry_cpu
from experiments import feed as feed_lib
from experiments import config as config_lib
from experiments.config import Config, ConfigError
from experiments.parallel import DataParallel
from nets.apply import Apply


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: the step count, parameters, other model variables
  (e.g. batch statistics) and the optimizer state."""

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


# Metrics of the logged step itself (train_step computes them after that step only); the others
# are logged as their means over the steps since the last log.
NORMS = ("train/grad_norm", "train/update_norm", "train/param_norm")


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or infinite."""


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, objective: nets.objectives.Objective, tx: optax.GradientTransformation,
               schedule: Callable[[Any], Any], axis_name: str | None = None, dtype: Any = None,
               matmul_dtype: Any = None, norms_every: int = 1,
               last_step: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on one device's view of the batch (see experiments.parallel);
  the model computes in `dtype` (None: float32), its products in `matmul_dtype` (see nets.apply).

  The gradient, update and parameter norms (`NORMS`) are computed after every `norms_every`-th
  step and after `last_step`, the steps whose metrics are logged, and are 0 after the others:
  on tiny models these reductions over every parameter are a fifth of a step (an MNIST-1D
  MLP's: 0.144 -> 0.116 ms)."""
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # each device draws its own dropout masks
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  model_rng, objective_rng = jax.random.split(rng)

  def loss_fn(params):
    apply = Apply(model, params, state.model_state, model_rng, train=True, dtype=dtype, matmul_dtype=matmul_dtype)
    per_example = objective(apply, batch, objective_rng)
    return jnp.mean(per_example["loss"]), (per_example, apply.new_model_state)

  (_, (per_example, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {f"train/{k}": jnp.mean(v) for k, v in per_example.items()}
  if axis_name is not None:
    grads, metrics, model_state = jax.lax.pmean((grads, metrics, model_state), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  norms = lambda: tuple(optax.global_norm(t) for t in (grads, updates, params))
  if norms_every > 1:
    logged = ((state.step + 1) % norms_every == 0) | (state.step + 1 == last_step)
    norms = functools.partial(jax.lax.cond, logged, norms, lambda: (jnp.zeros((), jnp.float32),) * len(NORMS))
  metrics.update(zip(NORMS, norms()))
  metrics["train/learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
              model: nn.Module, objective: nets.objectives.Objective, axis_name: str | None = None,
              dtype: Any = None, matmul_dtype: Any = None) -> dict[str, jax.Array]:
  """Sums of the per-example metrics over the unmasked examples, and their count."""
  batch = dict(batch)
  mask = batch.pop("mask")
  model_rng, objective_rng = jax.random.split(rng)
  apply = Apply(model, state.params, state.model_state, model_rng, train=False, dtype=dtype,
                matmul_dtype=matmul_dtype)
  per_example = getattr(objective, "evaluate", objective)(apply, batch, objective_rng)
  sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
  sums["count"] = jnp.sum(mask)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def build(config: Config, source: data.Source):
  """The model, objective, optimizer and schedule of `config` on the loaded data `source`.

  Model hyperparameters the flags leave unset are taken from the data: `num_outputs`
  (classes or regression targets), `vocab_size` (plus the objective's extra tokens, e.g.
  BERT's mask token), `max_len` (the longest sequence of the example batch), the data's
  shape for generative models (`data_shape`, `data_dim`, `image_size`, `channels`) and a
  GAN discriminator's `pack` (from --pack). The
  objective gets the Config fields named like its own fields, and `data_shape`.

  An objective with `param_groups` (a GAN's "generator" and "discriminator") gets one
  optimizer per group, keyed by the top-level parameter names, in one optimizer state.
  """
  example, num_classes = source.example, source.num_classes
  vocab_size = source.tokenizer.size if source.tokenizer else None
  data_shape = tuple(int(d) for d in example["x"].shape[1:])
  objective = nets.objectives.create(
      config.objective, **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
      vocab_size=vocab_size or 0, data_shape=data_shape)
  hparams = dict(config.model_hparams)
  fields = nets.hparams(config.model)
  if "num_outputs" in fields and "num_outputs" not in hparams:
    if config.objective == "classification" and num_classes:
      hparams["num_outputs"] = num_classes
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
               "pack": config.pack}  # PacGAN's discriminator reads --pack samples at once
  if len(data_shape) == 3:  # images
    from_data.update(image_size=data_shape[0], channels=data_shape[-1])
  for name, value in from_data.items():
    if name in fields and name not in hparams:
      hparams[name] = value
  model = nets.create(config.model, **hparams)
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
  return model, objective, tx, schedule


def init_state(model: nn.Module, tx: optax.GradientTransformation, example: dict[str, np.ndarray],
               rng: jax.Array, sharding: Any = None) -> TrainState:
  """Parameters and optimizer state, initialised directly in their `sharding` (a pytree like
  the state, or None: the default device)."""

  def init(rng):
    variables = model.init({"params": rng, "dropout": rng}, jnp.asarray(example["x"]), train=False)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                      opt_state=tx.init(params))

  return jax.jit(init, out_shardings=sharding)(rng)


class Restored(NamedTuple):
  config: Config
  source: data.Source
  model: nn.Module
  objective: nets.objectives.Objective
  params: Any
  model_state: Any  # other variables, e.g. batch statistics


def restore(workdir: str, step: int | None = None) -> Restored:
  """A run's config, data, model, objective, parameters and other model variables (its latest
  checkpoint, or `step`'s). Random draws lowered from here on take the fused Threefry loop on
  the CPU (`threefry_cpu`), as in training, and freed host memory is kept (`host_memory`)."""
  threefry_cpu.unroll()
  host_memory.keep_freed()
  config = config_lib.from_workdir(workdir)
  source = data.load(config)
  model, objective, tx, _ = build(config, source)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
  if ckpts.latest_step() is None:
    raise ConfigError(f"no checkpoint in {ckpts.directory}")
  like = jax.eval_shape(lambda: init_state(model, tx, source.example, jax.random.key(0)))
  state = ckpts.restore(like, step)
  ckpts.close()
  return Restored(config, source, model, objective, state.params, state.model_state)


def count_params(params: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def evaluate(p_eval: Callable, state: TrainState, batches: Iterable, rng: jax.Array, prefix: str) -> dict[str, float]:
  """Means of the per-example metrics over the evaluation `batches` (on the devices)."""
  totals = None
  for batch in batches:
    sums = p_eval(state, batch, rng)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals.pop("count")), 1.0)
  return {f"{prefix}/{k}": float(v) / count for k, v in totals.items()}


# --steps_per_dispatch=0 runs as many steps per dispatch as fit in about this many FLOPs
# (XLA's count): a fraction of a second on a CPU, far less on an accelerator, so a run
# still answers SIGTERM promptly, while the per-dispatch overhead of tiny steps vanishes.
DISPATCH_FLOPS = 1e10


class Steps:
  """The run's training steps compiled for each number of steps per dispatch it uses.

  `executable(k)` lowers and compiles `k` steps per dispatch once; `compile_s` adds up the
  time spent doing so. `k` is `--steps_per_dispatch`, or by default the largest divisor of
  the loop's period (the gcd of --steps, --log_every, --eval_every and --checkpoint_every)
  whose steps fit in `DISPATCH_FLOPS`, counted by XLA's cost analysis of the lowered step
  (off the CPU, or the matrix products counted from the traced step if more).
  """

  def __init__(self, config: Config, p_steps: Callable, par: DataParallel, feed: feed_lib.Feed,
               state: TrainState, resident: Any, rng: jax.Array):
    if par.mode == "jit":  # lowered from shapes, so that nothing holds on to the state given here
      state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    self._p_steps, self._par, self._args = p_steps, par, (state, resident, rng)
    self._one = par.put_items(feed.zeros())  # one step's items, for their shapes
    self._lowered: dict[int, Any] = {}
    self._compiled: dict[int, Any] = {}
    self.compile_s = 0.0
    period = math.gcd(*[p for p in (config.steps, config.log_every, config.eval_every, config.checkpoint_every) if p])
    if config.steps_per_dispatch:
      self.k = config.steps_per_dispatch
    else:
      flops = self.flops_per_step(period)
      if not _xla_counts_products(par):
        flops = max(flops or 0.0, self.matmul_flops_per_step(period)) or None
      budget = max(1, int(DISPATCH_FLOPS // flops)) if flops else 1
      self.k = max(d for d in range(1, min(period, budget) + 1) if period % d == 0)

  def _abstract_items(self, k: int) -> Any:
    """Items of k steps to lower for: their shapes (pmap: host zeros [devices, k, ...], the
    process-local arrays pmap takes)."""
    if self._par.mode == "pmap":
      return jax.tree.map(lambda x: np.zeros((x.shape[0], k) + x.shape[2:], x.dtype), self._one)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((k,) + x.shape[1:], x.dtype, sharding=x.sharding), self._one)

  def _lower(self, k: int) -> Any:
    if k not in self._lowered:
      t = time.perf_counter()
      state, resident, rng = self._args
      self._lowered[k] = self._p_steps.lower(state, resident, self._abstract_items(k), rng)
      self.compile_s += time.perf_counter() - t
    return self._lowered[k]

  def flops_per_step(self, k: int = 1) -> float | None:
    """XLA's count of one step's FLOPs (a scan's body is counted once); None if XLA gives none
    (e.g. pmap over several processes)."""
    try:
      analysis = self._lower(k).cost_analysis()
    except Exception:  # pylint: disable=broad-except
      return None
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None

  def matmul_flops_per_step(self, k: int = 1) -> float:
    """The matrix-product FLOPs of one step of the whole batch, counted from the traced
    program (`experiments.matmul_flops`: the same on every platform, unlike XLA's count)."""
    state, resident, rng = self._args
    return matmul_flops.of(self._p_steps, state, resident, self._abstract_items(k), rng) / k

  def executable(self, k: int) -> Callable:
    """The compiled steps for k steps per dispatch. Under pmap, the pmapped function itself
    (its compiled form wants global shapes; the call takes each process's own), which
    compiles on its first call."""
    if self._par.mode == "pmap":
      return self._p_steps
    if k not in self._compiled:
      lowered = self._lower(k)
      t = time.perf_counter()
      self._compiled[k] = lowered.compile()
      self.compile_s += time.perf_counter() - t
      host_memory.fit(_host_buffer_bytes(self._compiled[k]))
    return self._compiled[k]


def _on_cpu(par: DataParallel) -> bool:
  return par.local_devices[0].platform == "cpu"


def _xla_counts_products(par: DataParallel) -> bool:
  """Whether XLA's cost analysis counts the matrix products: on the CPU; not on a GPU, where
  it leaves out those it hands to cuBLAS and cuDNN (nanoGPT's GPU config on an H200: 40 or
  322 GFLOP a step by XLA's count, 1,162 in its products)."""
  return _on_cpu(par)


def _host_buffer_bytes(compiled: Any) -> int:
  """A compiled program's temporary buffers in host memory: its temp size on each CPU device
  it runs on in this process (0 off the CPU, or if XLA does not say)."""
  if jax.default_backend() != "cpu":
    return 0
  try:
    return compiled.memory_analysis().temp_size_in_bytes * jax.local_device_count()
  except Exception:  # pylint: disable=broad-except
    return 0


class _StepClock:
  """Time spent in training steps, compilation and paused spans excluded."""

  def __init__(self, start_step: int, total_steps: int):
    self.total_steps = total_steps
    self._origin = (start_step, time.perf_counter())
    self._lap = self._origin
    self._paused = 0.0  # seconds paused since the last lap
    self._paused_total = 0.0

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      dt = time.perf_counter() - t
      self._paused += dt
      self._paused_total += dt

  def lap(self, step: int) -> tuple[float | None, float | None]:
    """Steps/s since the previous lap, and the seconds left at that rate."""
    now = time.perf_counter()
    steps, seconds = step - self._lap[0], now - self._lap[1] - self._paused
    self._lap, self._paused = (step, now), 0.0
    if steps <= 0 or seconds <= 0:
      return None, None
    rate = steps / seconds
    return rate, (self.total_steps - step) / rate

  def steps_per_sec(self, step: int) -> float:
    steps = step - self._origin[0]
    seconds = time.perf_counter() - self._origin[1] - self._paused_total
    return steps / seconds if steps > 0 and seconds > 0 else math.nan


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _write_flagfile(config: Config, workdir: str) -> None:
  """Writes workdir/flags.flags, which reproduces the run; warns if a resumed run's flags changed."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "flags.flags")
  text = config_lib.to_flagfile(config) + f"--workdir={workdir}\n"
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      changed = sorted(set(text.splitlines()) - set(f.read().splitlines()))
    if changed:
      print(f"warning: resuming {workdir} with changed flags: {' '.join(changed)}", file=sys.stderr)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


class Prepared(NamedTuple):
  """A run of a config built up to its first step: what `train_and_evaluate` trains and
  `experiments.bench` times, built by `prepare` for both so that they run the same program."""

  par: DataParallel
  source: data.Source
  feed: feed_lib.Feed
  data_read_at: float  # time.perf_counter() once the training data was read
  model: nn.Module
  objective: nets.objectives.Objective
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  precision: dict[str, Any]  # the model's compute dtype and matmul_dtype (None: float32), for Apply
  state: TrainState  # freshly initialised
  state_sharding: Any
  resident: Any  # the feed's arrays held on the devices
  steps: Steps
  step_key: jax.Array
  eval_key: jax.Array


def prepare(config: Config) -> Prepared:
  """Checks the batch sizes against the devices, loads the data, builds the model and its
  initial state (invalid model hyperparameters raise ConfigError) and lowers the steps.
  Random draws lowered from here on take the fused Threefry loop on the CPU (`threefry_cpu`),
  and the process keeps the host memory it frees, for the next dispatch (`host_memory`)."""
  host_memory.keep_freed()
  par = DataParallel(config.parallel, config.num_devices, config.mesh)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size, "--eval_batch_size")
  source = data.load(config)
  feed = feed_lib.make(config, source)  # the training split read into memory if it is held on the devices
  data_read_at = time.perf_counter()
  threefry_cpu.unroll()  # before any program is lowered (its check lowers one: timed as training)
  init_key, step_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
  try:  # invalid model hyperparameters surface when the model is first built
    model, objective, tx, schedule = build(config, source)
    if par.sizes["fsdp"] == 1:  # every array replicated: no need to trace the model for its shapes first
      state = init_state(model, tx, source.example, init_key, par.replicated)
      state_sharding = jax.tree.map(lambda _: par.replicated, state)
    else:
      state_sharding = par.state_sharding(jax.eval_shape(lambda: init_state(model, tx, source.example, init_key)))
      state = init_state(model, tx, source.example, init_key, state_sharding)
  except ValueError as e:
    raise ConfigError(f"--model={config.model}: {e}") from e
  bf16 = lambda name: jnp.bfloat16 if name == "bfloat16" else None
  precision = {"dtype": bf16(config.dtype), "matmul_dtype": bf16(config.matmul_dtype)}
  resident = par.put_resident(feed.resident)
  # On the CPU the norms are computed after the logged steps only (see train_step); elsewhere
  # after every step: XLA's GPU runtime reads a cond's predicate back to the host each time.
  norms_every = config.log_every if _on_cpu(par) else 1
  p_steps = par.compile_steps(functools.partial(train_step, model=model, objective=objective, tx=tx,
                                                schedule=schedule, norms_every=norms_every,
                                                last_step=config.steps, **precision), feed.take, state_sharding)
  steps = Steps(config, p_steps, par, feed, state, resident, step_key)
  return Prepared(par, source, feed, data_read_at, model, objective, tx, schedule, precision, state, state_sharding,
                  resident, steps, step_key, eval_key)


def train_and_evaluate(config: Config, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

  Returns the summary (also written to `workdir/summary.json`), or, when stopped by
  SIGTERM, a dict with "stopped": True after saving a checkpoint.
  """
  start_time = time.perf_counter()
  run = prepare(config)
  par, source, feed, model, objective, steps = run.par, run.source, run.feed, run.model, run.objective, run.steps
  state, run = run.state, run._replace(state=None)  # a resumed run's initial state is freed once restored
  num_params = count_params(state.params)

  _write_flagfile(config, workdir)  # only once the input is known to be valid
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  tokens_per_step = config.batch_size * config.block_size if source.windows is not None else None
  log = logs.Logger(workdir, config.steps, tokens_per_step)
  start_step = ckpts.latest_step() or 0
  if start_step:
    state = ckpts.restore(state)
    log.info(f"Resumed from the checkpoint at step {start_step} in {ckpts.directory}")
  log.info(f"{config.model}: {num_params:,} parameters; {config.dataset}; {par.describe()}; workdir {workdir}")
  if par.sizes["fsdp"] > 1:
    log.info(par.describe_sharding(state, run.state_sharding))

  p_eval = par.compile(functools.partial(eval_step, model=model, objective=objective, **run.precision),
                       run.state_sharding, returns_state=False)
  reading = time.perf_counter()
  host_eval_batches = data.eval_batches(config, source)
  eval_batches = feed_lib.DeviceBatches(host_eval_batches, par.put_batch, config.device_data_mb * 2**20)
  final_batches = eval_batches
  if source.windows is not None and config.final_eval_batches not in (0, config.eval_batches):
    final_batches = feed_lib.DeviceBatches(data.eval_batches(config, source, final=True), par.put_batch, 0)
  if config.eval_every or final_batches is eval_batches:
    eval_batches.load()  # read with the training data, outside the training time, when it fits
  read_s = run.data_read_at - start_time + time.perf_counter() - reading  # reading the data
  write_samples = samples.writer(config, model, objective, source, host_eval_batches, workdir)
  log.info(f"{feed.describe()}; {steps.k} step(s) per dispatch")

  def run_eval(step: int, batches: Any = eval_batches) -> dict[str, float]:
    extra = write_samples(state, step) if write_samples else {}
    return {**evaluate(p_eval, state, batches, run.eval_key, "eval"),
            **{f"eval/{k}": float(v) for k, v in extra.items()}}

  pending: list[dict[str, jax.Array]] = []  # metrics on device, [k] per dispatch, fetched when logged
  last_good = start_step

  def flush(step: int) -> dict[str, float]:
    """Fetches pending metrics: their means over the steps since the last fetch (`NORMS`: at
    the last step); raises NonFiniteLoss (keeping checkpoints) on NaN/inf."""
    fetched = {k: np.concatenate([np.asarray(m[k]).reshape(-1) for m in jax.device_get(pending)])
               for k in pending[0]}
    pending.clear()
    losses = fetched["train/loss"]
    if not np.all(np.isfinite(losses)):
      bad = step - len(losses) + 1 + int(np.argmin(np.isfinite(losses)))
      raise NonFiniteLoss(f"loss is {losses[~np.isfinite(losses)][0]} at step {bad}; stopping. "
                          f"The last good checkpoint (step {last_good}) is kept in {ckpts.directory}")
    return {k: float(v[-1] if k in NORMS else np.mean(v)) for k, v in fetched.items()}

  chunks = feed_lib.plan(start_step, config.steps, steps.k, (config.log_every, config.eval_every,
                                                             config.checkpoint_every))
  for k in sorted({k for _, k in chunks}, reverse=True):  # compiled before the clock starts
    steps.executable(k)
  clock = _StepClock(start_step, config.steps)
  step = start_step
  prefetch = feed_lib.Prefetch(feed, chunks, par.put_items)
  with _SigtermFlag() as sigterm:
    try:
      for first, k, items in prefetch:
        state, metrics = steps.executable(k)(state, run.resident, items, run.step_key)
        pending.append(metrics)
        step = first + k
        done = step == config.steps
        should_log = step % config.log_every == 0 or done
        should_eval = (config.eval_every and step % config.eval_every == 0) or done
        should_save = (config.checkpoint_every and step % config.checkpoint_every == 0) or done
        if should_log or should_save or sigterm.raised:
          means = flush(step)
          if should_log:
            rate, eta = clock.lap(step)
            log.progress(step, means, rate, eta)
            log.write(step, {**means, **({"train/steps_per_sec": rate} if rate else {})})
        if (should_eval and not done) or should_save or sigterm.raised:
          jax.block_until_ready(state)  # the steps' time ends here, before the clock pauses
        with clock.paused():  # evaluation and checkpoints do not count as training time
          if should_eval and not done:
            log.write(step, run_eval(step))
          if should_save or sigterm.raised:
            ckpts.save(step, par.global_state(state))
            last_good = step
        if sigterm.raised:
          log.info(f"SIGTERM: saved the checkpoint at step {step}; run the same command to resume.")
          ckpts.close()
          log.close()
          return {"stopped": True, "step": step}
    except NonFiniteLoss:
      ckpts.close()
      log.close()
      raise
    finally:
      prefetch.close()

  ckpts.wait()  # the last checkpoint on disk before the final evaluation (a kill there loses nothing)
  final = run_eval(step, final_batches)
  log.write(step, final)
  ckpts.close()
  summary = {
      **final,
      "step": step,
      "num_params": num_params,
      "wall_time_s": time.perf_counter() - start_time,
      "train_time_s": time.perf_counter() - start_time - read_s,  # compiling, training and evaluating (not reading data)
      "compile_s": steps.compile_s,  # the training steps'
      "steps_per_dispatch": steps.k,
      "feed": type(feed).__name__,  # Examples, Windows (held on the devices) or Streamed
      "train_steps_per_sec": clock.steps_per_sec(step),
  }
  if tokens_per_step:
    summary["train_tokens_per_sec"] = summary["train_steps_per_sec"] * tokens_per_step
  if jax.process_index() == 0:
    logs.write_json(os.path.join(workdir, "summary.json"), summary)
  log.info("Final: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in summary.items()))
  log.close()
  return summary
