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

import nets
from experiments import build as build_lib
from experiments import checkpoint, data, dispatch, logs, runtime, samples
from experiments import feed as feed_lib
from experiments import config as config_lib
from experiments.build import TrainState
from experiments.config import Config
from experiments.parallel import DataParallel
from nets.apply import Apply

# Metrics of the logged step itself (train_step computes them after that step only); the others
# are logged as their means over the steps since the last log.
NORMS = ("train/grad_norm", "train/update_norm", "train/param_norm")


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or infinite."""


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, objective: nets.objectives.Objective, tx: optax.GradientTransformation,
               schedule: Callable[[Any], Any], call: Callable[..., Any] | None = None,
               axis_name: str | None = None, norms_every: int = 1,
               last_step: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on one device's view of the batch (see experiments.parallel);
  the model is run by `call` (default `model.apply`; `experiments.build.model_call`).

  The gradient, update and parameter norms (`NORMS`) are computed after every `norms_every`-th
  step and after `last_step`, the steps whose metrics are logged, and are 0 after the others:
  on tiny models these reductions over every parameter are a fifth of a step (an MNIST-1D
  MLP's: 0.144 -> 0.116 ms)."""
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # each device draws its own dropout masks
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  model_rng, objective_rng = jax.random.split(rng)

  def loss_fn(params):
    apply = Apply(model, params, state.model_state, model_rng, train=True, call=call)
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


def prepare(config: Config) -> Run:
  """Checks the batch sizes against the devices, loads the data, builds the model and its
  initial state (invalid model hyperparameters raise ConfigError) and the steps."""
  runtime.prepare_process()
  par = DataParallel(config.parallel.mode, config.parallel.num_devices, config.parallel.mesh)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size, "--eval_batch_size")
  source = data.load(config)
  feed = feed_lib.make(config, source)  # the training split read into memory if it is held on the devices
  data_read_at = time.perf_counter()
  init_key, step_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
  on_cpu = par.local_devices[0].platform == "cpu"
  built = build_lib.build(config, source, par.local_devices[0].platform)
  init = functools.partial(build_lib.init_state, built.model, built.tx, source.example, init_key)
  try:  # invalid model hyperparameters surface when the model is first built
    if par.sizes["fsdp"] == 1:  # every array replicated: no need to trace the model for its shapes first
      state = init(par.replicated)
      state_sharding = jax.tree.map(lambda _: par.replicated, state)
    else:
      state_sharding = par.state_sharding(jax.eval_shape(init))
      state = init(state_sharding)
  except ValueError as e:
    raise config_lib.ConfigError(f"--model={config.model}: {e}") from e
  # On the CPU the norms are computed after the logged steps only (see train_step); elsewhere
  # after every step: XLA's GPU runtime reads a cond's predicate back to the host each time.
  step = functools.partial(train_step, model=built.model, objective=built.objective, tx=built.tx,
                           schedule=built.schedule, call=built.call,
                           norms_every=config.log_every if on_cpu else 1, last_step=config.steps)
  steps = dispatch.Steps(config, par, feed, step, state, state_sharding, step_key)
  return Run(par, source, feed, data_read_at, built, state, state_sharding, steps, eval_key)


class _Sigterm:
  """Turns SIGTERM into a flag the loop checks after each dispatch."""

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


class _Pending:
  """Training metrics still on the devices, [k] per dispatch, fetched when logged."""

  def __init__(self):
    self._metrics: list[dict[str, jax.Array]] = []

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._metrics.append(metrics)

  def fetch(self, step: int, last_good: int, directory: str) -> dict[str, float]:
    """The metrics' means over the steps since the last fetch (`NORMS`: at the last step);
    raises NonFiniteLoss on NaN/inf, naming the last good checkpoint."""
    fetched = {k: np.concatenate([np.asarray(m[k]).reshape(-1) for m in jax.device_get(self._metrics)])
               for k in self._metrics[0]}
    self._metrics.clear()
    losses = fetched["train/loss"]
    if not np.all(np.isfinite(losses)):
      bad = step - len(losses) + 1 + int(np.argmin(np.isfinite(losses)))
      raise NonFiniteLoss(f"loss is {losses[~np.isfinite(losses)][0]} at step {bad}; stopping. "
                          f"The last good checkpoint (step {last_good}) is kept in {directory}")
    return {k: float(v[-1] if k in NORMS else np.mean(v)) for k, v in fetched.items()}


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


def train_and_evaluate(config: Config, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

  Returns the summary (also written to `workdir/summary.json`), or, when stopped by
  SIGTERM, a dict with "stopped": True after saving a checkpoint.
  """
  start_time = time.perf_counter()
  run = prepare(config)  # build
  par, source, steps, built = run.par, run.source, run.steps, run.built
  state, run = run.state, run._replace(state=None)  # a resumed run's initial state is freed once restored
  num_params = build_lib.count_params(state.params)

  _write_flagfile(config, workdir)  # only once the input is known to be valid
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  tokens_per_step = config.batch_size * config.block_size if source.windows is not None else None
  log = logs.Logger(workdir, config.steps, tokens_per_step)
  start_step = ckpts.latest_step() or 0  # restore
  if start_step:
    state = ckpts.restore(state)
    log.info(f"Resumed from the checkpoint at step {start_step} in {ckpts.directory}")
  log.info(f"{config.model}: {num_params:,} parameters; {config.dataset}; {par.describe()}; workdir {workdir}")
  if par.sizes["fsdp"] > 1:
    log.info(par.describe_sharding(state, run.state_sharding))

  p_eval = par.compile(functools.partial(eval_step, model=built.model, objective=built.objective, call=built.call),
                       run.state_sharding, returns_state=False)
  reading = time.perf_counter()
  host_eval_batches = data.eval_batches(config, source)
  eval_batches = feed_lib.DeviceBatches(host_eval_batches, par.put_batch, config.runtime.device_data_mb * 2**20)
  final_batches = eval_batches
  if source.windows is not None and config.final_eval_batches not in (0, config.eval_batches):
    final_batches = feed_lib.DeviceBatches(data.eval_batches(config, source, final=True), par.put_batch, 0)
  if config.eval_every or final_batches is eval_batches:
    eval_batches.load()  # read with the training data, outside the training time, when it fits
  read_s = run.data_read_at - start_time + time.perf_counter() - reading  # reading the data
  write_samples = samples.writer(config, built.model, built.objective, source, host_eval_batches, workdir)
  log.info(f"{run.feed.describe()}; {steps.k} step(s) per dispatch")

  def run_eval(step: int, batches: Any = eval_batches) -> dict[str, float]:
    extra = write_samples(state, step) if write_samples else {}
    return {**evaluate(p_eval, state, batches, run.eval_key, "eval"),
            **{f"eval/{k}": float(v) for k, v in extra.items()}}

  steps.compile(start_step)  # before the clock starts
  pending, last_good, step = _Pending(), start_step, start_step
  clock = logs.Clock(start_step, config.steps)
  with _Sigterm() as sigterm, steps.spans(start_step) as spans:
    for span in spans:
      state, metrics = steps(state, span)  # step
      pending.add(metrics)
      step = span.end
      done, stop = step == config.steps, sigterm.raised
      should_log = step % config.log_every == 0 or done
      should_eval = (config.eval_every and step % config.eval_every == 0) and not done  # (the final one: below)
      should_save = (config.checkpoint_every and step % config.checkpoint_every == 0) or done or stop
      if should_log or should_save:  # log
        try:
          means = pending.fetch(step, last_good, ckpts.directory)
        except NonFiniteLoss:
          ckpts.close()
          log.close()
          raise
        if should_log:
          rate, eta = clock.lap(step)
          log.progress(step, means, rate, eta)
          log.write(step, {**means, **({"train/steps_per_sec": rate} if rate else {})})
      if should_eval or should_save:
        jax.block_until_ready(state)  # the steps' time ends here, before the clock pauses
      with clock.paused():  # evaluation and checkpoints do not count as training time
        if should_eval:  # evaluate
          log.write(step, run_eval(step))
        if should_save:  # checkpoint
          ckpts.save(step, par.global_state(state))
          last_good = step
      if stop:
        log.info(f"SIGTERM: saved the checkpoint at step {step}; run the same command to resume.")
        ckpts.close()
        log.close()
        return {"stopped": True, "step": step}

  ckpts.wait()  # the last checkpoint on disk before the final evaluation (a kill there loses nothing)
  final = run_eval(step, final_batches)
  log.write(step, final)
  ckpts.close()
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
