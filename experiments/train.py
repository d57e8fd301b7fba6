"""The training spine: one pure train step and one loop for every model family.

`train_step(state, batch, rng) -> (state, metrics)` differentiates the objective's mean
per-example loss, updates with Optax and reports batch means. Its randomness is
`fold_in(rng, state.step)`, so a resumed run draws what an uninterrupted one would.

`train_and_evaluate(config, workdir)` reads top to bottom: build the run (`prepare`: data,
model, objective, optimizer, initial state, compiled steps), restore its latest checkpoint,
then for each dispatch of steps (`experiments.dispatch`): step, log, evaluate, checkpoint;
SIGTERM saves and stops, a non-finite loss stops with the last good checkpoint kept; then
the final evaluation and `summary.json`.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

import nets
from experiments import build as build_lib
from experiments import checkpoint, data, dispatch, federated, finetune, logs, runtime, samples
from experiments import workdir as workdir_lib
from experiments import feed as feed_lib
from experiments import config as config_lib
from experiments.build import TrainState
from experiments.config import Config, ConfigError
from experiments.parallel import DataParallel
from nets.apply import Apply

# Metrics of the logged step itself (train_step computes them after that step only); the others
# are logged as their means over the steps since the last log.
NORMS = ("train/grad_norm", "train/update_norm", "train/param_norm")


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or infinite."""


_AUGMENT_STREAM = 0xA5  # folded into a step's key for its augmentations


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, objective: nets.objectives.Objective, tx: optax.GradientTransformation,
               schedule: Callable[[Any], Any], call: Callable[..., Any] | None = None,
               axis_name: str | None = None, norms_every: int = 1, last_step: int = 0,
               ema_decay: float = 0.0, accum_steps: int = 1,
               augment: Callable[[dict, jax.Array], dict] | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on one device's view of the batch (see experiments.parallel);
  the model is run by `call` (default `model.apply`; `experiments.build.model_call`).

  The gradient, update and parameter norms (`NORMS`) are computed after every `norms_every`-th
  step and after `last_step`, the steps whose metrics are logged, and are 0 after the others:
  on tiny models these reductions over every parameter are a fifth of a step (an MNIST-1D
  MLP's: 0.144 -> 0.116 ms).

  `augment` (`nets.augment.pipeline`) transforms the batch first, with a key of its own folded
  from the step's. With `ema_decay`, the state's `ema_params` become `ema_decay * ema_params + (1 - ema_decay)
  * params` after the update (evaluation and sampling then use them).

  With `accum_steps` = K > 1 the batch is cut into K micro-batches (example i in micro-batch
  i mod K, so that each device holds its share of every one), whose gradients and metrics
  are computed one after another (`lax.scan`) and averaged: the same mean gradient as the
  whole batch's, in one micro-batch's activation memory. Micro-batch i draws its dropout and
  objective randomness from keys folded with i, and model state (batch statistics) passes
  from one micro-batch to the next."""
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # each device draws its own dropout masks
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  if augment is not None:  # (its own key: the model's and objective's draws stay those of a run without it)
    batch = augment(batch, jax.random.fold_in(rng, _AUGMENT_STREAM))
  model_rng, objective_rng = jax.random.split(rng)

  def gradients(model_state, batch, model_rng, objective_rng):
    def loss_fn(params):
      apply = Apply(model, params, model_state, model_rng, train=True, call=call)
      per_example = objective(apply, batch, objective_rng)
      return jnp.mean(per_example["loss"]), (per_example, apply.new_model_state)

    (_, (per_example, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, {f"train/{k}": jnp.mean(v) for k, v in per_example.items()}, model_state

  if accum_steps == 1:
    grads, metrics, model_state = gradients(state.model_state, batch, model_rng, objective_rng)
  else:
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]),
                                                0, 1), batch)

    def accumulate(carry, i_batch):
      i, micro_batch = i_batch
      (grads, metrics), model_state = carry
      new = gradients(model_state, micro_batch, jax.random.fold_in(model_rng, i), jax.random.fold_in(objective_rng, i))
      return (jax.tree.map(jnp.add, (grads, metrics), new[:2]), new[2]), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(gradients, state.model_state, first, model_rng, objective_rng)[:2])
    ((grads, metrics), model_state), _ = jax.lax.scan(accumulate, (zeros, state.model_state),
                                                      (jnp.arange(accum_steps), micro))
    grads, metrics = jax.tree.map(lambda t: t / accum_steps, (grads, metrics))
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
  ema_params = state.ema_params
  if ema_decay:
    ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params)
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state,
                            ema_params=ema_params)
  return new_state, metrics


def evaluated(state: TrainState) -> TrainState:
  """The state as evaluations and samples see it: its parameters' moving average, when kept."""
  return state if state.ema_params is None else state.replace(params=state.ema_params)


def eval_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
              model: nn.Module, objective: nets.objectives.Objective, call: Callable[..., Any] | None = None,
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Sums of the per-example metrics over the unmasked examples, and their count."""
  batch = dict(batch)
  mask = batch.pop("mask")
  model_rng, objective_rng = jax.random.split(rng)
  apply = Apply(model, state.params, state.model_state, model_rng, train=False, call=call)
  per_example = getattr(objective, "evaluate", objective)(apply, batch, objective_rng)
  sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
  sums["count"] = jnp.sum(mask)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def evaluate(p_eval: Callable, state: TrainState, batches: Iterable, rng: jax.Array, prefix: str) -> dict[str, float]:
  """Means of the per-example metrics over the evaluation `batches` (on the devices)."""
  totals = None
  for batch in batches:
    sums = p_eval(state, batch, rng)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals.pop("count")), 1.0)
  return {f"{prefix}/{k}": float(v) / count for k, v in totals.items()}


def _check_augment(config: Config, source: data.Source) -> None:
  """The augmentations asked for fit the data (signals or images) and the objective."""
  on = config.augment.on()
  if not on:
    return
  x = source.example.get("x")
  if source.windows is not None or x is None or x.ndim not in (2, 3, 4):
    raise ConfigError(f"{', '.join(on)}: augmentation applies to signals and images; --dataset={config.dataset} "
                      "holds neither")
  kind, other = ("images", nets.augment.SIGNAL) if x.ndim == 4 else ("signals", nets.augment.IMAGE)
  wrong = [flag for flag in on if flag.split(".", 1)[1] in other]
  if wrong:
    raise ConfigError(f"{', '.join(wrong)} do not apply to --dataset={config.dataset}, which holds {kind}")
  if (config.augment.mixup or config.augment.cutmix) and config.objective != "classification":
    raise ConfigError(f"--augment.mixup and --augment.cutmix mix the labels of a classifier; --objective="
                      f"{config.objective}")


class Run(NamedTuple):
  """A run of a config built up to its first step: what `train_and_evaluate` trains and
  `experiments.bench` times, built by `prepare` for both so that they run the same program."""

  par: DataParallel
  source: data.Source
  feed: feed_lib.Feed
  data_read_at: float  # time.perf_counter() once the training data was read
  built: build_lib.Built
  state: TrainState  # freshly initialised
  state_sharding: Any
  steps: dispatch.Steps
  eval_key: jax.Array
  clients: federated.Clients | None = None  # a federated run's (--fed.clients)


def prepare(config: Config) -> Run:
  """Checks the batch sizes against the devices, loads the data, builds the model and its
  initial state (invalid model hyperparameters raise ConfigError) and the steps."""
  runtime.prepare_process()
  par = DataParallel(config.parallel.mode, config.parallel.num_devices, config.parallel.mesh)
  if config.fed.on:
    federated.check_devices(config, par)
    federated.privacy_spent(config, 1)  # (dp-accounting is there)
  else:
    par.check_batch_size(config.batch_size)
    if config.grad_accum_steps > 1:
      par.check_batch_size(config.batch_size // config.grad_accum_steps,
                           f"--batch_size / --grad_accum_steps (a micro-batch, {config.grad_accum_steps} per step)")
  par.check_batch_size(config.eval_batch_size, "--eval_batch_size")
  source = data.load(config)
  _check_augment(config, source)
  clients = federated.clients(config, source) if config.fed.on else None
  # the training split read into memory if it is held on the devices
  feed = federated.ClientFeed(config, clients) if clients else feed_lib.make(config, source)
  data_read_at = time.perf_counter()
  init_key, step_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
  on_cpu = par.local_devices[0].platform == "cpu"
  built = build_lib.build(config, source, par.local_devices[0].platform)
  init = functools.partial(build_lib.init_state, built.model, built.tx, source.example, init_key,
                           ema=bool(config.ema_decay), scaffold_clients=build_lib.scaffold_clients(config))
  if config.reinit or config.freeze:  # the paths name parameters of this model (shapes only: nothing computed)
    params_like = jax.eval_shape(init).params
    for flag in ("reinit", "freeze"):
      finetune.check_paths(flag, finetune.split_paths(getattr(config, flag)), params_like)
  try:  # invalid model hyperparameters surface when the model is first built
    if par.sizes["fsdp"] == 1:  # every array replicated: no need to trace the model for its shapes first
      state = init(par.replicated)
      state_sharding = jax.tree.map(lambda _: par.replicated, state)
    else:
      state_sharding = par.state_sharding(jax.eval_shape(init))
      state = init(state_sharding)
  except ValueError as e:
    raise config_lib.ConfigError(f"--model={config.model}: {e}") from e
  if clients:  # a step is a federated round
    federated.check_model(config, state)
    step = functools.partial(federated.round_step, model=built.model, objective=built.objective, tx=built.tx,
                             schedule=built.schedule, call=built.call, config=config)
    steps = dispatch.Steps(config, par, feed, step, state, state_sharding, step_key)
    return Run(par, source, feed, data_read_at, built, state, state_sharding, steps, eval_key, clients)
  # On the CPU the norms are computed after the logged steps only (see train_step); elsewhere
  # after every step: XLA's GPU runtime reads a cond's predicate back to the host each time.
  step = functools.partial(train_step, model=built.model, objective=built.objective, tx=built.tx,
                           schedule=built.schedule, call=built.call,
                           norms_every=config.log_every if on_cpu else 1, last_step=config.steps,
                           ema_decay=config.ema_decay, accum_steps=config.grad_accum_steps,
                           augment=config.augment.pipeline())
  steps = dispatch.Steps(config, par, feed, step, state, state_sharding, step_key)
  return Run(par, source, feed, data_read_at, built, state, state_sharding, steps, eval_key)


class _Signals:
  """SIGTERM and SIGINT (Ctrl-C) as a flag the loop reads after each dispatch: it then saves a
  checkpoint and stops. Before the loop (reading data, compiling) there is nothing to save,
  so a signal stops the process at once; so does a second Ctrl-C."""

  NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}

  def __init__(self):
    self.received: int | None = None
    self.in_loop = False
    self._previous = {}

  def __enter__(self):
    for sig in self.NAMES:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if not self.in_loop or (signum == signal.SIGINT and self.received == signal.SIGINT):
      why = "a second Ctrl-C" if self.in_loop else f"{self.NAMES[signum]} before the first step"
      print(f"error: stopped by {why}; nothing saved since the last checkpoint", file=sys.stderr, flush=True)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.received = signum

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


class _Pending:
  """Training metrics still on the devices, [k] per dispatch, fetched when logged."""

  def __init__(self):
    self._metrics: list[dict[str, jax.Array]] = []

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._metrics.append(metrics)

  def fetch(self, step: int, kept: Callable[[], str]) -> dict[str, float]:
    """The metrics' means over the steps since the last fetch (`NORMS`: at the last step);
    raises NonFiniteLoss on NaN/inf, saying which checkpoint is `kept()`."""
    fetched = {k: np.concatenate([np.asarray(m[k]).reshape(-1) for m in jax.device_get(self._metrics)])
               for k in self._metrics[0]}
    self._metrics.clear()
    losses = fetched["train/loss"]
    if not np.all(np.isfinite(losses)):
      bad = step - len(losses) + 1 + int(np.argmin(np.isfinite(losses)))
      raise NonFiniteLoss(f"loss is {losses[~np.isfinite(losses)][0]} at step {bad}; stopping. {kept()}")
    return {k: float(v[-1] if k in NORMS else np.mean(v)) for k, v in fetched.items()}


class _Profile:
  """--profile_steps=START:END: a jax.profiler trace of steps START+1 .. END (the dispatches
  break there), written where TensorBoard's profile tab finds it."""

  def __init__(self, span: tuple[int, int] | None, directory: epath.Path, info: Callable[[str], None]):
    self.span, self.directory, self.info, self.on = span, directory, info, False

  def before(self, first: int) -> None:
    if self.span and first == self.span[0]:
      jax.profiler.start_trace(os.fspath(self.directory))
      self.on = True

  def after(self, step: int, state: Any) -> None:
    if self.on and step == self.span[1]:
      jax.block_until_ready(state)
      self.stop()
      self.info(f"Profiled steps {self.span[0] + 1}-{self.span[1]}: {self.directory}/plugins/profile "
                f"(tensorboard --logdir={self.directory}, Profile tab)")

  def stop(self) -> None:
    if self.on:
      self.on = False
      jax.profiler.stop_trace()


@jax.jit
def _finite(state: TrainState) -> jax.Array:
  """Whether every parameter, optimizer statistic and model variable is finite."""
  leaves = [x for x in jax.tree.leaves((state.params, state.opt_state, state.model_state))
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def _saved_config(workdir: epath.Path) -> Config | None:
  """The config of the run a workdir holds (its flags.flags), if it holds a checkpoint."""
  if not (workdir / "flags.flags").exists() or not checkpoint.saved_steps(workdir / "checkpoints"):
    return None
  return config_lib.from_workdir(workdir)


def _fresh_start(workdir: epath.Path) -> str:
  return f"choose another --workdir to start afresh (or resume with --flagfile={workdir / 'flags.flags'})"


def _write_flagfile(config: Config, workdir: epath.Path, start_step: int, changed: list[str]) -> None:
  """Writes workdir/flags.flags, which reproduces the run; a resumed run's changed flags are
  also appended to workdir/resumes.jsonl."""
  if jax.process_index() != 0:
    return
  (workdir / "flags.flags").write_text(config_lib.to_flagfile(config) + f"--workdir={workdir}\n")
  if changed:
    with (workdir / "resumes.jsonl").open("a") as f:
      f.write(json.dumps({"step": start_step, "changed": changed}) + "\n")


def train_and_evaluate(config: Config, workdir: str | os.PathLike,
                       on_evaluation: Callable[[int, dict[str, float]], bool] | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

  Returns the summary (also written to `workdir/summary.json`), or, when stopped by
  SIGTERM or SIGINT, {"stopped": "SIGTERM" or "SIGINT", "step": ...} after saving a
  checkpoint. The workdir is checked and locked before any data is read (`Workdir`).
  `on_evaluation(step, metrics)` is called after each evaluation during training (a search
  reports them to its pruner); when it returns True the run stops there, without a final
  evaluation or summary, and returns {"stopped": "on_evaluation", "step": ...}.
  """
  start_time = time.perf_counter()
  folder = workdir_lib.Workdir(workdir)
  with _Signals() as signals:
    if jax.process_index() == 0:
      folder.check()
      folder.lock()
    try:
      return _train(config, folder.path, signals, start_time, on_evaluation)
    finally:
      folder.release()


def _train(config: Config, workdir: epath.Path, signals: _Signals, start_time: float,
           on_evaluation: Callable[[int, dict[str, float]], bool] | None) -> dict[str, Any]:
  saved = _saved_config(workdir)
  changed = []
  if saved is not None:  # a resumed run: the same model on the same data, before anything is read
    refused, changed = config_lib.resume_changes(saved, config)
    if refused:
      raise ConfigError(f"--workdir={workdir} holds a run of another model or data ({'; '.join(refused)}); "
                        + _fresh_start(workdir))
  if saved is None and config.init_from:  # (a resumed run starts from its own checkpoint)
    finetune.check(config)
  run = prepare(config)  # build
  par, source, steps, built = run.par, run.source, run.steps, run.built
  state, run = run.state, run._replace(state=None)  # a resumed run's initial state is freed once restored
  num_params = build_lib.count_params(state.params)

  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
  latest = ckpts.latest_step()
  start_step = 0
  if latest is not None and latest > config.steps:
    raise ConfigError(f"--steps={config.steps} but --workdir={workdir} holds a checkpoint at step {latest}: pass "
                      "more --steps to train it further, or choose another --workdir to start afresh")
  if latest is not None:  # restore
    misfits = ckpts.mismatches(state)
    if misfits:
      raise ConfigError(f"--workdir={workdir} holds a checkpoint of another state ({'; '.join(misfits[:3])}"
                        f"{'; ...' if len(misfits) > 3 else ''}; changed flags: {'; '.join(changed) or 'none'}); "
                        + _fresh_start(workdir))
    restored, start_step = ckpts.restore_intact(state)
    if restored is not None:
      state = restored
  initialised = ""
  if latest is None and config.init_from:  # fine-tuning: a fresh run from another's parameters
    state, initialised = finetune.initialise(config, state, built.model, built.tx, run.state_sharding)
  _write_flagfile(config, workdir, start_step, changed)  # only once the input is known to be valid
  # The checkpoint of the best validation value, and early stopping (a resumed run counts the
  # evaluations since its best again, from the steps).
  best, misses = None, 0
  if config.watched_metric:
    best = checkpoint.Best(workdir / "checkpoints.best", f"val/{config.watched_metric}", config.watch_mode)
    best.load(before=start_step)
    if best.step is not None:
      misses = start_step // config.eval_every - best.step // config.eval_every
  patience = config.early_stopping_patience
  stopped_early = bool(patience and misses >= patience)
  tokens_per_step = (config.batch_size * config.block_size if source.windows is not None and not config.fed.on
                     else None)
  log = logs.Logger(workdir, config.steps, tokens_per_step, start_step,
                    ended=start_step == config.steps or stopped_early,
                    clients_per_round=config.fed.clients_per_round if config.fed.on else None)
  if start_step:
    log.info(f"Resumed from the checkpoint at step {start_step} in {ckpts.directory}"
             + (f" with changed flags: {'; '.join(changed)}" if changed else ""))
  log.info(f"{config.model}: {num_params:,} parameters; {config.dataset}; {par.describe()}; workdir {workdir}")
  if initialised:
    log.info(initialised)
  if par.sizes["fsdp"] > 1:
    log.info(par.describe_sharding(state, run.state_sharding))
  if run.clients is not None:
    log.info(federated.describe(config, run.clients, workdir if jax.process_index() == 0 else None))

  p_eval = par.compile(functools.partial(eval_step, model=built.model, objective=built.objective, call=built.call),
                       run.state_sharding, returns_state=False)
  reading = time.perf_counter()
  # With a validation split, the evaluations during training use it ("val/" metrics) and the
  # test split (--eval_split, "eval/") is read once, after the last step.
  host_eval_batches = data.eval_batches(config, source) if config.eval_split else None  # (none: validation only)
  validating = config.validation_split is not None
  host_periodic = data.EvalBatches(config, source.builder, config.validation_split) if validating else host_eval_batches
  prefix = "val" if validating else "eval"
  eval_batches = feed_lib.DeviceBatches(host_periodic, par.put_batch, config.runtime.device_data_mb * 2**20)
  final_batches = eval_batches
  if source.windows is not None and config.final_eval_batches not in (0, config.eval_batches):
    final_batches = feed_lib.DeviceBatches(data.eval_batches(config, source, final=True), par.put_batch, 0)
  if config.eval_every or final_batches is eval_batches:
    eval_batches.load()  # read with the training data, outside the training time, when it fits
  read_s = run.data_read_at - start_time + time.perf_counter() - reading  # reading the data
  write_samples = samples.writer(config, built.model, built.objective, source, host_periodic, workdir)
  log.info(f"{run.feed.describe()}; {steps.k} step(s) per dispatch")

  def run_eval(step: int, batches: Any = eval_batches) -> dict[str, float]:
    extra = write_samples(evaluated(state), step) if write_samples else {}
    epsilon = federated.privacy_spent(config, step) if config.fed.on else None
    return {**evaluate(p_eval, evaluated(state), batches, run.eval_key, prefix),
            **{f"{prefix}/{k}": float(v) for k, v in extra.items()},
            **({"privacy/epsilon": epsilon} if epsilon is not None else {})}

  def once(final_state: TrainState, batches: Any, prefix: str) -> dict[str, float]:  # a split read once
    return evaluate(p_eval, evaluated(final_state), feed_lib.DeviceBatches(batches, par.put_batch, 0),
                    run.eval_key, prefix)

  def final_eval(step: int) -> dict[str, float]:
    """The best checkpoint's validation metrics (from when it was saved) or the last state's,
    then the test split (read here only, when validating) and the training examples."""
    chosen = best is not None and best.step is not None  # (a finished run resumed with a new metric has none)
    final_state = best.restore(state) if chosen else state
    metrics = best.metrics if chosen else run_eval(step, final_batches)
    if validating and host_eval_batches is not None:
      metrics = {**metrics, **once(final_state, host_eval_batches, "eval")}
    if config.eval_train:
      metrics = {**metrics, **once(final_state, data.EvalBatches(config, source.builder, config.fit_split), "fit")}
    return metrics

  def watch(step: int, metrics: dict[str, float]) -> bool:
    """Keeps the best checkpoint; whether patience has run out."""
    nonlocal misses
    if best.metric not in metrics:
      raise ConfigError(f"--best_metric={config.watched_metric}: the validation has no {best.metric}; it has "
                        + ", ".join(k[len("val/"):] for k in metrics if k.startswith("val/")))
    if best.better(metrics[best.metric]):
      best.save(step, par.global_state(state), {k: v for k, v in metrics.items() if k.startswith("val/")})
      misses = 0
    else:
      misses += 1
    return bool(patience and misses >= patience)

  def kept() -> str:  # which checkpoint a stopped run leaves
    last = ckpts.latest_step()
    return (f"The last good checkpoint (step {last}) is kept in {ckpts.directory}" if last is not None
            else "No checkpoint was saved before it")

  steps.compile(start_step)  # before the clock starts
  pending, step = _Pending(), start_step
  profile = _Profile(config.profile_span, workdir / "tensorboard", log.info)
  clock = logs.Clock(start_step, config.steps)
  signals.in_loop = True
  try:
    with steps.spans(start_step) as spans:
      for span in spans if not stopped_early else ():
        profile.before(span.first)
        state, metrics = steps(state, span)  # step
        pending.add(metrics)
        step = span.end
        profile.after(step, state)
        done, stop = step == config.steps, signals.received
        should_log = step % config.log_every == 0 or done
        # (the evaluation after the last step is below; with a best checkpoint, the last step
        # competes too, whether or not it is a multiple of --eval_every)
        should_eval = bool(config.eval_every) and (
            (step % config.eval_every == 0 and not done) or (done and best is not None))
        should_save = (config.checkpoint_every and step % config.checkpoint_every == 0) or done or stop
        if should_log or should_save:  # log
          means = pending.fetch(step, kept)
          if should_log:
            rate, eta = clock.lap(step)
            log.progress(step, means, rate, eta)
            log.write(step, {**means, **({"train/steps_per_sec": rate} if rate else {})})
        if should_eval or should_save:
          jax.block_until_ready(state)  # the steps' time ends here, before the clock pauses
        with clock.paused():  # evaluation and checkpoints do not count as training time
          if should_eval:  # evaluate
            metrics = run_eval(step)
            log.evaluation(step, metrics)
            log.write(step, metrics)
            if best is not None:
              stopped_early = watch(step, metrics)
              should_save = should_save or stopped_early
            if on_evaluation is not None and on_evaluation(step, metrics):
              log.info(f"Stopped after the evaluation at step {step}, as the caller asked (on_evaluation).")
              return {"stopped": "on_evaluation", "step": step}
          if should_save:  # checkpoint: only a state whose every number is finite
            if not bool(_finite(state)):
              raise NonFiniteLoss(f"the state became NaN or infinite by step {step}; stopping. {kept()}")
            ckpts.save(step, par.global_state(state))
        if stop:
          ckpts.wait()
          name = signals.NAMES[stop]
          log.info(f"{name}: saved the checkpoint at step {step}; run the same command to resume.")
          return {"stopped": name, "step": step}
        if stopped_early:
          break
    if stopped_early:
      log.info(f"Early stopping at step {step}: {best.metric} has not improved for {misses} evaluations since step "
               f"{best.step} ({logs.fmt_value(best.value)})")
    train_steps_per_sec = clock.steps_per_sec(step)  # the training steps only
    waited = time.perf_counter()
    ckpts.wait()  # the last checkpoint on disk before the final evaluation (a kill there loses nothing)
    signals.in_loop = False  # (a signal now has nothing left to save)
    eval_start = time.perf_counter()
    final = final_eval(step)
    final_eval_s, checkpoint_wait_s = time.perf_counter() - eval_start, eval_start - waited
    logged = final
    if best is not None and best.step is not None:  # its validation metrics are logged at its step already
      logged = {k: v for k, v in final.items() if not k.startswith("val/")}
      log.info(f"The best checkpoint (step {best.step}, {best.metric} {logs.fmt_value(best.value)}) on "
               f"--eval_split={config.eval_split}:")
    log.evaluation(step, logged)
    log.write(step, logged)
  finally:
    signals.in_loop = False
    profile.stop()
    ckpts.close()
    log.close()
    if best is not None:
      best.close()
  flops_per_step = steps.matmul_flops_per_step()
  summary = {
      **final,
      "step": step,
      "num_params": num_params,
      "wall_time_s": time.perf_counter() - start_time,
      # compiling, training and evaluating (not reading data)
      "train_time_s": time.perf_counter() - start_time - read_s,
      "compile_s": steps.compile_s,  # the training steps'
      "steps_per_dispatch": steps.k,
      "feed": type(run.feed).__name__,  # Examples, Windows (held on the devices) or Streamed
      "train_steps_per_sec": train_steps_per_sec,  # evaluations and checkpoints not counted: below
      # Compute: the matrix products of a step (counted from the traced program, experiments/flops.py)
      # times the steps trained, from the first (a resumed run's earlier steps included).
      "matmul_flops_per_step": flops_per_step,
      "train_flops": flops_per_step * step,
      "final_eval_s": final_eval_s,
      **({"best_step": best.step, "best_metric": best.metric, "best_value": best.value,
          "stop_reason": "early_stopping" if stopped_early else "steps"} if best is not None else {}),
      "checkpoint_wait_s": checkpoint_wait_s,  # for the last checkpoint, before the final evaluation
  }
  if config.fed.on:
    summary["train_client_updates_per_sec"] = train_steps_per_sec * config.fed.clients_per_round
    epsilon = federated.privacy_spent(config, step)
    if epsilon is not None:
      summary.update({"privacy_epsilon": epsilon, "privacy_delta": config.fed.delta})
  if tokens_per_step:
    summary["train_tokens_per_sec"] = summary["train_steps_per_sec"] * tokens_per_step
  if jax.process_index() == 0:
    logs.write_json(workdir / "summary.json", summary)
  log.info("Final: " + ", ".join(f"{k} {logs.fmt_value(v)}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in summary.items()))
  sample = (f"; sample from it: python -m experiments.sample --workdir={workdir}"
            if config.objective in ("lm", "seq2seq") else "")
  log.info(f"Workdir {workdir}. Train it further: python -m experiments.run --flagfile={workdir}/flags.flags "
           f"--steps=N{sample}")
  return summary
