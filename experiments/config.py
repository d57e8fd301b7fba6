"""Every hyperparameter of a run: one frozen, validated `Config` in sections, and its flags.

- The fields every run uses are plain flags, grouped as data, model, objective, optimizer,
  loop and precision: `--dataset`, `--batch_size`, `--learning_rate`, `--steps` ...
- A model's hyperparameters are its dataclass fields in `nets`, as `--MODEL.FIELD`
  (`--cnn.features=32,32`); an objective's are `--OBJECTIVE.FIELD` (`--gan.loss=hinge`).
  Those left unset take the module's default or, where the trainer knows it, the data's
  (`num_outputs`, `vocab_size`, ...). Setting another model's or objective's is an error.
- Sections that only some runs use are small frozen dataclasses, each validated on its own,
  whose fields are `--SECTION.FIELD`: `--sample.*`, `--parallel.*`, `--runtime.*`. A new
  capability adds its section to `SECTIONS`.

`define_flags()` defines every flag; `from_flags()` builds and validates a `Config` (bad
input raises `ConfigError`, one line naming the flag); programs that do not use absl build
`Config(...)` directly. `to_flagfile()` writes the flag file that reproduces a config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, ClassVar

from absl import flags
from etils import epath

import nets
from experiments import optim


class ConfigError(ValueError):
  """Bad input, found before any compute: an unknown name, a value out of range..."""


def _field(default: Any, help: str, *, choices: tuple[str, ...] | None = None,  # pylint: disable=redefined-builtin
           lower: float | None = None, group: str = "") -> Any:
  return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "lower": lower,
                                                      "group": group})


def check_fields(obj: Any, prefix: str = "") -> None:
  """The checks every field of a dataclass declares: choices, lower bounds, finite floats."""
  for f in dataclasses.fields(obj):
    meta, value = f.metadata, getattr(obj, f.name)
    name = f"--{prefix}{f.name}"
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{name}={value!r} must be a finite number")
    if meta.get("choices") and value not in meta["choices"]:
      raise ConfigError(f"{name}={value!r} is not one of {', '.join(meta['choices'])}")
    if meta.get("lower") is not None and value < meta["lower"]:
      raise ConfigError(f"{name}={value!r} must be >= {meta['lower']}")


class Section:
  """A group of flags `--NAME.FIELD` that only some runs use: subclasses are frozen
  dataclasses of `_field`s, checked when built."""

  NAME: ClassVar[str] = ""

  def __post_init__(self):
    check_fields(self, f"{self.NAME}.")


@dataclasses.dataclass(frozen=True)
class Sample(Section):
  """What a run writes into workdir/samples at each evaluation (experiments/samples.py)."""

  NAME: ClassVar[str] = "sample"
  tokens: int = _field(500, "Language models: tokens of text (WaveNet: audio samples) generated (0: none).", lower=0)
  temperature: float = _field(0.8, "Softmax temperature of those tokens (0: greedy).", lower=0.0)
  top_k: int = _field(40, "Sample from the k most likely tokens (0: all).", lower=0)
  count: int = _field(64, "Generative models: samples drawn, written as images or plots (the 2D mixtures are "
                      "scored on them; the papers use 2,500).", lower=1)


@dataclasses.dataclass(frozen=True)
class Parallel(Section):
  """How the run's devices share the work (experiments/parallel.py)."""

  NAME: ClassVar[str] = "parallel"
  mode: str = _field("jit", "Data parallelism: jit over a device Mesh, or pmap.", choices=("jit", "pmap"))
  num_devices: int = _field(0, "Local devices to use (0: all).", lower=0)
  mesh: str = _field("", "Device mesh as AXIS:SIZE pairs over the axes data and fsdp, e.g. data:2,fsdp:2 (one "
                     "size may be -1: the rest). fsdp > 1 splits parameters and optimizer state over that many "
                     "devices. Empty: every device on data.")


@dataclasses.dataclass(frozen=True)
class Augment(Section):
  """Data augmentation inside the jitted training step, drawn from (seed, step): a resumed run
  draws the same (nets/augment.py). Off by default."""

  NAME: ClassVar[str] = "augment"
  shift: int = _field(0, "Signals: move each by up to this many steps, either way.", lower=0)
  shift_circular: bool = _field(True, "Signals: shift around the end (false: zeros come in).")
  scale: float = _field(0.0, "Signals: multiply each by a factor in [1 - scale, 1 + scale].", lower=0.0)
  noise: float = _field(0.0, "Signals: add Gaussian noise of this standard deviation.", lower=0.0)
  stretch: float = _field(0.0, "Signals: stretch each in time by a factor in [1 - stretch, 1 + stretch].",
                          lower=0.0)
  crop_padding: int = _field(0, "Images: random crops of the image padded with this many zeros per side.",
                             lower=0)
  flip: bool = _field(False, "Images: mirror left to right half of the time (where the classes allow it).")
  mixup: float = _field(0.0, "Classifiers: mixup with weights ~ Beta(mixup, mixup) (0: off).", lower=0.0)
  cutmix: float = _field(0.0, "Classifiers: cutmix with areas ~ Beta(cutmix, cutmix) (0: off; with --augment.mixup, "
                         "one of the two per batch).", lower=0.0)

  def __post_init__(self):
    super().__post_init__()
    for name in ("scale", "stretch"):
      if getattr(self, name) >= 1:
        raise ConfigError(f"--augment.{name}={getattr(self, name)} must be below 1")

  def on(self) -> list[str]:
    """The flags of the augmentations asked for."""
    return [f"--augment.{f.name}" for f in dataclasses.fields(self)
            if f.name != "shift_circular" and getattr(self, f.name)]

  def pipeline(self):
    return nets.augment.pipeline(self.shift, self.shift_circular, self.scale, self.noise, self.stretch,
                                 self.crop_padding, self.flip, self.mixup, self.cutmix)


@dataclasses.dataclass(frozen=True)
class Runtime(Section):
  """How the steps reach the devices; none of it changes the numbers of a run."""

  NAME: ClassVar[str] = "runtime"
  steps_per_dispatch: int = _field(0, "Training steps run per dispatch to the devices (one lax.scan), never across "
                                   "a log, evaluation or checkpoint step. 0: as many as fit in about 10 GFLOP, "
                                   "up to the next of those steps.", lower=0)
  device_data_mb: float = _field(512.0, "Hold the training data on every device when it takes at most this many "
                                 "MiB (batches are then cut on the device); larger data is streamed from the "
                                 "host. 0: always stream.", lower=0.0)
  cpu_threads: int = _field(0, "Threads of XLA's CPU backend (0: one per core). Tiny models step faster on 1, "
                            "where handing work between threads costs more than it gives. Set before JAX "
                            "starts (experiments/runtime/cpu_threads.py).", lower=0)
  compilation_cache_dir: str = _field("~/.cache/nets/jax", "JAX's persistent compilation cache: a run of a program "
                                      "compiled before loads it from here (empty: off; JAX_COMPILATION_CACHE_DIR "
                                      "in the environment replaces the default).")


@dataclasses.dataclass(frozen=True)
class Fed(Section):
  """Federated learning (experiments/federated.py): the training examples split among clients,
  trained in rounds. One --steps is one round; --optimizer and --learning_rate are the server's
  (sgd at 1.0: FedAvg's averaging; adam, yogi, adagrad: FedAdam, FedYogi, FedAdagrad). Off by
  default (--fed.clients=0)."""

  NAME: ClassVar[str] = "fed"
  clients: int = _field(0, "Clients the training examples are split among (0: not federated).", lower=0)
  partition: str = _field("iid", "How: iid; shards (McMahan et al.'s pathological non-IID: sorted by label, "
                          "--fed.shards_per_client shards each); dirichlet (label skew, --fed.alpha); quantity_skew "
                          "(log-normal sizes, --fed.sigma); roles (text: one client per speaking role, "
                          "--fed.clients of the roles that say most).",
                          choices=("iid", "shards", "dirichlet", "quantity_skew", "roles"))
  shards_per_client: int = _field(2, "--fed.partition=shards: shards each client holds.", lower=1)
  alpha: float = _field(0.5, "--fed.partition=dirichlet: the concentration (small: few classes per client).")
  sigma: float = _field(1.0, "--fed.partition=quantity_skew: sigma of the log-normal client sizes.", lower=0.0)
  clients_per_round: int = _field(10, "Clients sampled (uniformly, without replacement) each round.", lower=1)
  local_epochs: int = _field(1, "E: passes over its data each sampled client makes per round.", lower=1)
  local_batch_size: int = _field(10, "B: each client's local batch (0: its whole data, one step per epoch; with "
                                 "--fed.local_epochs=1 that is FedSGD).", lower=0)
  local_learning_rate: float = _field(0.1, "The clients' SGD learning rate.", lower=0.0)
  algorithm: str = _field("fedavg", "Local training: fedavg; fedprox (adds --fed.prox_mu / 2 ||w - w_server||^2); "
                          "scaffold (control variates kept per client).", choices=("fedavg", "fedprox", "scaffold"))
  prox_mu: float = _field(0.01, "FedProx's proximal weight mu.", lower=0.0)
  clip_norm: float = _field(0.0, "DP-FedAvg: clip each client's update to this L2 norm and average with equal "
                            "weights (0: no clipping; updates weighted by client size).", lower=0.0)
  noise_multiplier: float = _field(0.0, "DP-FedAvg: Gaussian noise of std noise_multiplier x clip_norm on the sum "
                                   "of the clipped updates (needs --fed.clip_norm).", lower=0.0)
  dp_delta: float = _field(0.0, "The delta at which the privacy spent is reported (0: 1 / clients^1.1).", lower=0.0)

  def __post_init__(self):
    super().__post_init__()
    if not self.clients:
      changed = [f"--fed.{f.name}" for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
      if changed:
        raise ConfigError(f"{', '.join(changed)} set but --fed.clients=0: federated training is off")
    if self.clients and self.clients_per_round > self.clients:
      raise ConfigError(f"--fed.clients_per_round={self.clients_per_round} exceeds --fed.clients={self.clients}")
    if self.partition == "dirichlet" and not self.alpha > 0:
      raise ConfigError(f"--fed.alpha={self.alpha} must be > 0 (the Dirichlet concentration)")
    if self.noise_multiplier and not self.clip_norm:
      raise ConfigError(f"--fed.noise_multiplier={self.noise_multiplier} without --fed.clip_norm bounds nothing: "
                        "noise protects privacy only on clipped updates")
    if self.dp_delta >= 1:
      raise ConfigError(f"--fed.dp_delta={self.dp_delta} must be below 1")

  @property
  def on(self) -> bool:
    return self.clients > 0

  @property
  def delta(self) -> float:
    return self.dp_delta or 1.0 / self.clients ** 1.1


SECTIONS: tuple[type[Section], ...] = (Sample, Parallel, Runtime, Augment, Fed)

_data = functools.partial(_field, group="Data")
_model = functools.partial(_field, group="Model")
_objective = functools.partial(_field, group="Objective")
_optimizer = functools.partial(_field, group="Optimizer")
_loop = functools.partial(_field, group="Loop")
_precision = functools.partial(_field, group="Precision")
_finetune = functools.partial(_field, group="Fine-tuning")


def _section(cls: type[Section]) -> Any:
  return dataclasses.field(default_factory=cls, metadata={"section": cls})


@dataclasses.dataclass(frozen=True)
class Config:
  """A run: data, model, objective, optimizer, loop and precision, then the sections."""

  dataset: str = _data("mnist1d", "TFDS dataset name: one of ours (mnist1d, digits, char_text, numbers_to_words, "
                       "mixture2d/ring, mixture2d/grid, tones) or any TFDS catalog name.")
  text_path: str = _data("", "Text file of --dataset=char_text (default: ../shared/data/tinyshakespeare/input.txt "
                         "beside the repository).")
  tokenizer: str = _data("char", "Text datasets: char (token i is the i-th of the text's sorted characters, as in "
                         "nanoGPT's shakespeare_char) or gpt2:FOLDER (GPT-2's byte-level BPE from the vocab.json "
                         "and merges.txt of a Hugging Face GPT-2 folder).")
  data_dir: str = _data("", "TFDS data directory (empty: TFDS's default, ~/tensorflow_datasets).")
  train_split: str = _data("train", "TFDS split to train on.")
  eval_split: str = _data("test", "TFDS split to evaluate on (with --validation_fraction: the test split, "
                          "evaluated once, at the end; empty: none, only validation, as in a search's trials).")
  validation_fraction: float = _data(0.0, "Carve this fraction of --train_split (a whole percentage: its last "
                                     "examples) out as a validation split: the evaluations during training use it, "
                                     "and --eval_split is evaluated once, at the end (0: none).", lower=0.0)
  label_noise: float = _data(0.0, "Replace this fraction of the training labels (exactly that many, chosen by "
                             "--seed) with uniformly random classes; validation and test untouched (0: none; 1: every "
                             "label random, as in the label-randomisation sanity check).",
                             lower=0.0)
  train_examples: int = _data(0, "Train on the first this many examples of --train_split, before the validation "
                              "split (0: all of them).", lower=0)
  batch_size: int = _data(100, "Global training batch size (all devices and processes).", lower=1)
  eval_batch_size: int = _data(1000, "Global evaluation batch size.", lower=1)
  shuffle: bool = _data(True, "Shuffle the training data each epoch (false: take it in order).")
  shuffle_buffer: int = _data(50_000, "Shuffle buffer size in examples.", lower=1)
  block_size: int = _data(256, "Text and audio: tokens per training window (the model's context).", lower=1)
  eval_batches: int = _data(20, "Text and audio: random evaluation windows per evaluation, in batches of "
                            "--eval_batch_size.", lower=1)
  final_eval_batches: int = _data(0, "Text and audio: batches of the evaluation after the last step (0: "
                                  "--eval_batches), drawn as the others, so the first ones are theirs: a cheap "
                                  "estimate during training, a precise one at the end.", lower=0)
  model: str = _model("cnn", "Model name in the nets registry; its hyperparameters are --MODEL.FIELD flags.",
                      choices=tuple(nets.names()))
  model_hparams: dict = dataclasses.field(default_factory=dict, metadata={"flag": False})
  objective: str = _objective("classification", "What is minimised; its hyperparameters are --OBJECTIVE.FIELD "
                              "flags.", choices=tuple(nets.objectives.names()))
  objective_hparams: dict = dataclasses.field(default_factory=dict, metadata={"flag": False})
  optimizer: str = _optimizer("adam", "Optax optimizer.", choices=optim.OPTIMIZERS)
  learning_rate: float = _optimizer(1e-2, "Peak learning rate.", lower=0.0)
  schedule: str = _optimizer("constant", "Learning-rate schedule.", choices=optim.SCHEDULES)
  warmup_steps: int = _optimizer(0, "Linear warmup steps.", lower=0)
  min_learning_rate: float = _optimizer(0.0, "Final learning rate of the cosine and linear schedules.", lower=0.0)
  momentum: float = _optimizer(0.9, "Momentum of sgd momentum/nesterov.", lower=0.0)
  b1: float = _optimizer(0.9, "Adam-family beta1.", lower=0.0)
  b2: float = _optimizer(0.999, "Adam-family beta2 (rmsprop: its decay).", lower=0.0)
  eps: float = _optimizer(1e-8, "Adam-family epsilon.", lower=0.0)
  weight_decay: float = _optimizer(0.0, "Weight decay: decoupled for adamw/lamb/lion, an L2 gradient term "
                                   "otherwise.", lower=0.0)
  decay_weights_only: bool = _optimizer(False, "Decay only weight matrices and embeddings, not biases and norms.")
  ema_decay: float = _optimizer(0.0, "Keep an exponential moving average of the parameters with this decay (e.g. "
                                "0.999), checkpointed with them; evaluations and samples use it (0: off).", lower=0.0)
  grad_clip_norm: float = _optimizer(0.0, "Clip gradients to this global norm (0: off).", lower=0.0)
  grad_accum_steps: int = _optimizer(1, "Gradient accumulation: split each global batch into this many micro-batches "
                                     "(every device's share of each), run one after another inside the step "
                                     "(lax.scan) and average their gradients: the step of the whole batch in a "
                                     "micro-batch's activation memory. Must divide the batch on each device.",
                                     lower=1)
  discriminator_learning_rate: float = _optimizer(0.0, "GANs: the discriminator's peak learning rate (0: "
                                                  "--learning_rate). Each player has its own optimizer.", lower=0.0)
  steps: int = _loop(6000, "Training steps.", lower=1)
  log_every: int = _loop(100, "Log training metrics every this many steps.", lower=1)
  eval_every: int = _loop(250, "Evaluate every this many steps (0: only at the end).", lower=0)
  checkpoint_every: int = _loop(1000, "Save a checkpoint every this many steps (0: only at the end).", lower=0)
  keep_checkpoints: int = _loop(3, "How many recent checkpoints to keep.", lower=1)
  best_metric: str = _loop("", "Keep the checkpoint of the best validation value of this metric (loss, accuracy, "
                           "...: a val/ metric) in WORKDIR/checkpoints.best, and evaluate that one at the end "
                           "(empty: off; with --early_stopping_patience: loss).")
  best_mode: str = _loop("auto", "Whether --best_metric is better lower (min) or higher (max); auto: max for "
                         "accuracy-like metrics, min otherwise.", choices=("auto", "min", "max"))
  early_stopping_patience: int = _loop(0, "Stop after this many evaluations without a better --best_metric "
                                       "(0: never). Needs --validation_fraction and --eval_every.", lower=0)
  eval_train: bool = _loop(False, "Also evaluate the final (or best) parameters on the training examples, with the "
                          "labels trained on: fit/ metrics in summary.json, for the train-test gap.")
  seed: int = _loop(0, "Seed of parameter initialisation, dropout and data order.")
  profile_steps: str = _loop("", "START:END: trace steps START+1 .. END with jax.profiler into WORKDIR/tensorboard "
                             "(TensorBoard's profile tab; Perfetto). Empty: off.")
  init_from: str = _finetune("", "Fine-tuning: start from another run's parameters and model variables (not its "
                             "optimizer state or step): WORKDIR or WORKDIR:STEP (default: its latest checkpoint), or "
                             "a Hugging Face GPT-2 folder (config.json + model.safetensors; --model=gpt). A workdir "
                             "that holds a checkpoint of its own resumes from it instead.")
  reinit: str = _finetune("", "With --init_from: parameter subtrees initialised afresh instead of loaded, as "
                          "comma-separated paths (head, block3/mlp; * matches within a name), e.g. a classifier for "
                          "another number of classes.")
  freeze: str = _finetune("", "Parameter subtrees left as they are (their updates are zero: optax.set_to_zero), "
                          "paths as --reinit (e.g. embed,block0,block1).")
  dtype: str = _precision("float32", "Compute dtype: bfloat16 runs the model in bfloat16 with float32 parameters, "
                          "optimizer state and losses (mixed precision).", choices=("float32", "bfloat16"))
  matmul_dtype: str = _precision("float32", "bfloat16: every matrix product of a float32 model takes bfloat16 "
                                 "operands, accumulated and returned in float32, in the backward pass too; "
                                 "everything else stays float32 (torch.autocast's treatment of matmuls; "
                                 "experiments/runtime/products.py).", choices=("float32", "bfloat16"))
  sample: Sample = _section(Sample)
  parallel: Parallel = _section(Parallel)
  runtime: Runtime = _section(Runtime)
  augment: Augment = _section(Augment)
  fed: Fed = _section(Fed)

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Checks what single flags cannot: names, ranges and cross-field constraints."""
    check_fields(self)
    for what, name, hparams, known in (("model", self.model, self.model_hparams, nets.hparams(self.model)),
                                       ("objective", self.objective, self.objective_hparams,
                                        nets.objectives.hparams(self.objective))):
      for field, value in hparams.items():
        if field not in known:
          raise ConfigError(f"{what} {name!r} has no hyperparameter {field!r}; it has: {', '.join(known) or 'none'}")
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))):
          raise ConfigError(f"--{name}.{field}={_text(value)} must be "
                            + ("finite numbers" if isinstance(value, tuple) else "a finite number"))
    try:  # the model's and the objective's own checks (names, ranges) before any data is read
      nets.create(self.model, **self.model_hparams)
    except ValueError as e:
      raise ConfigError(f"--model={self.model}: {e}") from None
    try:
      nets.objectives.create(self.objective, **self.objective_hparams)
    except ValueError as e:
      raise ConfigError(f"--objective={self.objective}: {e}") from None
    if self.validation_fraction and (self.validation_fraction >= 1 or
                                     abs(self.validation_fraction * 100 - self._validation_percent) > 1e-9):
      raise ConfigError(f"--validation_fraction={self.validation_fraction} must be a whole percentage in (0, 1), "
                        "e.g. 0.1")
    if not self.eval_split and not self.validation_fraction:
      raise ConfigError("--eval_split is empty: a run without a test split needs a validation split "
                        "(--validation_fraction) to evaluate on")
    if (self.validation_fraction or self.train_examples) and "[" in self.train_split:
      raise ConfigError(f"--train_split={self.train_split} is already a slice: --validation_fraction and "
                        "--train_examples slice the whole split")
    if self.best_metric.split("/")[0] in ("val", "eval", "train", "fit") and "/" in self.best_metric:
      raise ConfigError(f"--best_metric={self.best_metric}: name the metric without its split (e.g. "
                        f"--best_metric={self.best_metric.split('/', 1)[1]}: the validation split's is watched)")
    if self.watched_metric and not self.validation_fraction:
      what = "--early_stopping_patience" if self.early_stopping_patience else "--best_metric"
      raise ConfigError(f"{what} needs a validation split (--validation_fraction): choices are made on validation "
                        "data, never the test split")
    if self.watched_metric and not self.eval_every:
      raise ConfigError("--early_stopping_patience and --best_metric need evaluations during training (--eval_every)")
    if self.label_noise > 1:
      raise ConfigError(f"--label_noise={self.label_noise} must be at most 1 (0: none; 1: every label random)")
    if self.ema_decay >= 1:
      raise ConfigError(f"--ema_decay={self.ema_decay} must be below 1 (0: off)")
    self._check_steps_and_finetuning()
    if self.warmup_steps > self.steps:
      raise ConfigError(f"--warmup_steps={self.warmup_steps} exceeds --steps={self.steps}")
    if self.matmul_dtype == "bfloat16" and self.dtype != "float32":
      raise ConfigError(f"--matmul_dtype=bfloat16 is for float32 models; --dtype={self.dtype} already "
                        "computes every product in that dtype")
    if self.model_hparams.get("attention_kernel") == "cudnn" and self.dtype == "float32":
      raise ConfigError(f"--{self.model}.attention_kernel=cudnn runs in 16 bits: it needs --dtype=bfloat16")
    if self.fed.on:
      self._check_federated()
    if self.dataset == "char_text" and self.text_path and not os.path.isfile(os.path.expanduser(self.text_path)):
      raise ConfigError(f"--text_path={self.text_path!r}: no such file (the text of --dataset=char_text)")
    if self.tokenizer != "char":
      self._check_tokenizer()
    if self.data_dir and not os.path.isdir(os.path.expanduser(self.data_dir)):
      raise ConfigError(f"--data_dir={self.data_dir!r} does not exist")

  def _check_steps_and_finetuning(self) -> None:
    if self.batch_size % self.grad_accum_steps:
      raise ConfigError(f"--grad_accum_steps={self.grad_accum_steps} must divide --batch_size={self.batch_size} "
                        "(each micro-batch is batch_size / grad_accum_steps examples)")
    if self.grad_accum_steps > 1 and self.fed.on:
      raise ConfigError("--grad_accum_steps applies to the training step; federated rounds (--fed.clients) take "
                        "their own local batches (--fed.local_batch_size)")
    if self.profile_steps:
      start_end = self.profile_span
      if start_end is None or not 0 <= start_end[0] < start_end[1] <= self.steps:
        raise ConfigError(f"--profile_steps={self.profile_steps} must be START:END with 0 <= START < END <= "
                          f"--steps={self.steps}")
    if self.reinit and not self.init_from:
      raise ConfigError(f"--reinit={self.reinit} re-initialises part of a loaded model: it needs --init_from")
    for name in ("reinit", "freeze"):
      paths = getattr(self, name).split(",") if getattr(self, name) else []
      if any(not p.strip() or p.strip().startswith("/") or p.strip().endswith("/") for p in paths):
        raise ConfigError(f"--{name}={getattr(self, name)} must be comma-separated parameter paths like head or "
                          "block3/mlp")

  @property
  def profile_span(self) -> tuple[int, int] | None:
    """--profile_steps as (START, END), None if unset or malformed."""
    parts = self.profile_steps.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      return None
    return int(parts[0]), int(parts[1])

  def _check_federated(self) -> None:
    """What federated training cannot take, before any data is read."""
    if self.objective not in ("classification", "lm"):
      raise ConfigError(f"--fed.clients trains classifiers and language models; --objective={self.objective} is "
                        "neither")
    if self.parallel.mode != "jit":
      raise ConfigError("--fed.clients shards clients over a device mesh: it needs --parallel.mode=jit")
    if self.augment.on() or self.ema_decay or self.label_noise:
      used = self.augment.on() + (["--ema_decay"] if self.ema_decay else []) + (
          ["--label_noise"] if self.label_noise else [])
      raise ConfigError(f"{', '.join(used)} do not apply to federated rounds (--fed.clients)")
    if (self.fed.partition == "roles") != (self.dataset == "char_text"):
      raise ConfigError(f"--fed.partition={self.fed.partition}: speaking roles are the clients of "
                        "--dataset=char_text, and char_text's clients are its roles (--fed.partition=roles)")
    if self.fed.partition == "roles" and self.objective != "lm":
      raise ConfigError("--fed.partition=roles trains a language model: --objective=lm")

  def _check_tokenizer(self) -> None:
    kind, _, folder = self.tokenizer.partition(":")
    if kind != "gpt2" or not folder:
      raise ConfigError(f"--tokenizer={self.tokenizer!r} is not char or gpt2:FOLDER")
    for name in (nets.gpt2.VOCAB, nets.gpt2.MERGES):
      path = os.path.join(os.path.expanduser(folder), name)
      if not os.path.isfile(path):
        raise ConfigError(f"--tokenizer={self.tokenizer}: no {path} (GPT-2's tokenizer reads {nets.gpt2.VOCAB} and "
                          f"{nets.gpt2.MERGES} of a Hugging Face GPT-2 folder)")

  @property
  def _validation_percent(self) -> int:
    return round(self.validation_fraction * 100)

  @property
  def fit_split(self) -> str:
    """The examples trained on: --train_split less the validation split, bounded by
    --train_examples (TFDS slicing)."""
    if self.train_examples:
      return f"{self.train_split}[:{self.train_examples}]"
    if self.validation_fraction:
      return f"{self.train_split}[:{100 - self._validation_percent}%]"
    return self.train_split

  @property
  def validation_split(self) -> str | None:
    """The validation examples (the last --validation_fraction of --train_split), if any."""
    return f"{self.train_split}[{100 - self._validation_percent}%:]" if self.validation_fraction else None

  @property
  def watched_metric(self) -> str | None:
    """The validation metric whose best checkpoint is kept (and early stopping watches)."""
    return self.best_metric or ("loss" if self.early_stopping_patience else None)

  @property
  def watch_mode(self) -> str:
    if self.best_mode != "auto":
      return self.best_mode
    return "max" if any(w in (self.watched_metric or "") for w in ("accuracy", "acc", "exact", "bleu")) else "min"

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)


def plain_fields() -> list[dataclasses.Field]:
  """The Config fields that are plain flags (`--NAME`), in declaration order."""
  return [f for f in dataclasses.fields(Config) if f.metadata.get("flag", True) and "section" not in f.metadata]


def section_fields() -> list[dataclasses.Field]:
  """The Config fields that hold a section."""
  return [f for f in dataclasses.fields(Config) if "section" in f.metadata]


def _parse_tuple(text: str, like: tuple) -> tuple:
  """'25,25,25' -> (25, 25, 25), typed like the field's default."""
  kind = type(like[0]) if like else int
  items = [s.strip() for s in text.split(",") if s.strip()]
  try:
    return tuple(kind(s) for s in items)
  except ValueError:
    raise ConfigError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None


def _define(name: str, default: Any, help: str, values: flags.FlagValues, *, flag_default: Any = None,  # pylint: disable=redefined-builtin
            choices: tuple[str, ...] | None = None) -> None:
  """Defines one flag typed like `default`; its own default is `flag_default`."""
  if choices:
    flags.DEFINE_enum(name, flag_default, list(choices), help, flag_values=values)
  elif isinstance(default, bool):
    flags.DEFINE_bool(name, flag_default, help, flag_values=values)
  elif isinstance(default, int):
    flags.DEFINE_integer(name, flag_default, help, flag_values=values)
  elif isinstance(default, float):
    flags.DEFINE_float(name, flag_default, help, flag_values=values)
  else:  # strings, and tuples given as comma-separated lists
    flags.DEFINE_string(name, flag_default, help, flag_values=values)


def _shown(default: Any) -> Any:
  return ",".join(map(str, default)) if isinstance(default, tuple) else default


def hparam_families() -> list[tuple[str, str, dict[str, dataclasses.Field]]]:
  """("model" or "objective", name, its hyperparameters) for every model and objective."""
  return ([("model", m, nets.hparams(m)) for m in nets.names()] +
          [("objective", o, nets.objectives.hparams(o)) for o in nets.objectives.names()])


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines a flag for every Config field, section field, model and objective hyperparameter."""
  for f in plain_fields():
    _define(f.name, f.default, f.metadata["help"], values, flag_default=f.default, choices=f.metadata.get("choices"))
  prefixes = [cls.NAME for cls in SECTIONS]
  for cls in SECTIONS:
    for f in dataclasses.fields(cls):
      _define(f"{cls.NAME}.{f.name}", f.default, f.metadata["help"], values, flag_default=f.default,
              choices=f.metadata.get("choices"))
  for what, name, fields in hparam_families():
    if name in prefixes:
      raise ValueError(f"{what} {name!r} has the name of a flag section")
    for field_name, f in fields.items():
      _define(f"{name}.{field_name}", f.default, f"{name} hyperparameter (default: {_shown(f.default)}).", values)
  flags.DEFINE_string("workdir", "", "Run directory (default: a new folder under runs/). "
                      "A workdir holding a checkpoint resumes from it.", flag_values=values)


def _hparams_from_flags(what: str, chosen: str, values: flags.FlagValues) -> dict[str, Any]:
  """The `--NAME.FIELD` flags of the chosen model (or objective) that were set; setting
  another one's is an error."""
  hparams = {}
  for kind, name, fields in hparam_families():
    if kind != what:
      continue
    for field_name, f in fields.items():
      value = values[f"{name}.{field_name}"].value
      if value is None:
        continue
      if name != chosen:
        raise ConfigError(f"--{name}.{field_name} is set but --{what}={chosen}; "
                          f"set --{chosen}.* flags or choose --{what}={name}")
      if isinstance(f.default, tuple):
        try:
          value = _parse_tuple(value, f.default)
        except ConfigError as e:
          raise ConfigError(f"--{name}.{field_name}={value}: {e}") from None
        if not value:
          raise ConfigError(f"--{name}.{field_name} is empty")
      hparams[field_name] = value
  return hparams


def from_flags(values: flags.FlagValues = flags.FLAGS) -> Config:
  kwargs: dict[str, Any] = {f.name: values[f.name].value for f in plain_fields()}
  for f in section_fields():
    cls = f.metadata["section"]
    kwargs[f.name] = cls(**{g.name: values[f"{cls.NAME}.{g.name}"].value for g in dataclasses.fields(cls)})
  kwargs["model_hparams"] = _hparams_from_flags("model", kwargs["model"], values)
  kwargs["objective_hparams"] = _hparams_from_flags("objective", kwargs["objective"], values)
  return Config(**kwargs)


def from_workdir(workdir: str | os.PathLike) -> Config:
  """The Config a run was trained with, from its workdir/flags.flags."""
  path = epath.Path(workdir) / "flags.flags"
  if not path.exists():
    raise ConfigError(f"--workdir={workdir} has no flags.flags: not a run directory")
  values = flags.FlagValues()
  define_flags(values)
  lines = [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("--")]
  try:
    values(["run", *lines])
  except flags.Error as e:
    raise ConfigError(f"{path}: {e}") from None
  return from_flags(values)


def _text(value: Any) -> str:
  if isinstance(value, tuple):
    return ",".join(map(str, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


# Flags whose change makes another model or other data: a checkpoint of one does not resume
# as the other (`resume_changes`).
FIXED_ON_RESUME = ("model", "objective", "dataset", "text_path", "tokenizer", "train_split", "validation_fraction",
                   "train_examples", "label_noise", "fed.clients", "fed.partition", "fed.shards_per_client",
                   "fed.alpha", "fed.sigma", "fed.algorithm", "freeze")


def flag_values(config: Config) -> dict[str, str]:
  """Every flag of `config` as text, the model's and objective's hyperparameters included
  (their defaults where unset)."""
  values = dict(line[2:].split("=", 1) for line in to_flagfile(config).splitlines())
  for kind, name, known in (("model", config.model, config.model_hparams),
                            ("objective", config.objective, config.objective_hparams)):
    fields = nets.hparams(name) if kind == "model" else nets.objectives.hparams(name)
    for field, f in fields.items():
      values.setdefault(f"{name}.{field}", _text(known.get(field, f.default)))
  return values


def resume_changes(saved: Config, new: Config) -> tuple[list[str], list[str]]:
  """The flags that differ between a run's saved config and the one it is resumed with, as
  "--NAME=OLD -> NEW": those that make another model or data (refused), and the others
  (allowed: more steps, other logging or evaluation cadence, another learning rate...)."""
  a, b = flag_values(saved), flag_values(new)
  fixed_prefixes = {f"{c.model}." for c in (saved, new)} | {f"{c.objective}." for c in (saved, new)}
  # Another model (objective): its name says it; the two's hyperparameters are not compared.
  unlisted = ({f"{c.model}." for c in (saved, new)} if saved.model != new.model else set()) | (
      {f"{c.objective}." for c in (saved, new)} if saved.objective != new.objective else set())
  refused, allowed = [], []
  for name in sorted(set(a) | set(b)):
    if a.get(name) != b.get(name) and not any(name.startswith(p) for p in unlisted):
      change = f"--{name}={a.get(name, '(none)')} -> {b.get(name, '(none)')}"
      fixed = name in FIXED_ON_RESUME or any(name.startswith(p) for p in fixed_prefixes)
      (refused if fixed else allowed).append(change)
  return refused, allowed


def to_flagfile(config: Config) -> str:
  """A flag file that reproduces `config` (every field, the set hyperparameters included)."""
  lines = [f"--{f.name}={_text(getattr(config, f.name))}" for f in plain_fields()]
  lines += [f"--{config.model}.{k}={_text(v)}" for k, v in config.model_hparams.items()]
  lines += [f"--{config.objective}.{k}={_text(v)}" for k, v in config.objective_hparams.items()]
  for f in section_fields():
    section = getattr(config, f.name)
    lines += [f"--{section.NAME}.{g.name}={_text(getattr(section, g.name))}" for g in dataclasses.fields(section)]
  return "\n".join(lines) + "\n"
