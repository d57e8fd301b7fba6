"""Every hyperparameter of a run, as one validated dataclass, and the absl flags that set it.

The `Config` fields are the single source of truth: `define_flags()` turns each field into
an absl flag of the same name, and every model's hyperparameters (its dataclass fields in
`nets`) into flags named `--MODEL.FIELD` (e.g. `--cnn.features=32,32`). `from_flags()`
builds and validates a `Config`; programs that do not use absl build `Config(...)` directly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags

import nets
from experiments import optim


class ConfigError(ValueError):
  """Bad input, found before any compute: an unknown name, a value out of range..."""


def _field(default: Any, help: str, *, choices: tuple[str, ...] | None = None,  # pylint: disable=redefined-builtin
           lower: float | None = None) -> Any:
  return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "lower": lower})


@dataclasses.dataclass(frozen=True)
class Config:
  """A run: data, model, objective, optimizer and loop."""

  # Data.
  dataset: str = _field("mnist1d", "TFDS dataset name: one of ours (mnist1d, char_text, numbers_to_words) "
                        "or any TFDS catalog name.")
  text_path: str = _field("", "Text file of --dataset=char_text (default: ../shared/data/tinyshakespeare/input.txt "
                          "beside the repository).")
  data_dir: str = _field("", "TFDS data directory (empty: TFDS's default, ~/tensorflow_datasets).")
  train_split: str = _field("train", "TFDS split to train on.")
  eval_split: str = _field("test", "TFDS split to evaluate on.")
  batch_size: int = _field(100, "Global training batch size (all devices and processes).", lower=1)
  eval_batch_size: int = _field(1000, "Global evaluation batch size.", lower=1)
  shuffle: bool = _field(True, "Shuffle the training data each epoch (false: take it in order).")
  shuffle_buffer: int = _field(50_000, "Shuffle buffer size in examples.", lower=1)
  block_size: int = _field(256, "Text datasets: tokens per training window (the model's context).", lower=1)
  eval_batches: int = _field(20, "Text datasets: random evaluation windows per evaluation, in batches of "
                             "--eval_batch_size.", lower=1)
  final_eval_batches: int = _field(0, "Text datasets: batches of the evaluation after the last step (0: "
                                   "--eval_batches), drawn as the others, so the first ones are theirs: a cheap "
                                   "estimate during training, a precise one at the end.", lower=0)
  # Model.
  model: str = _field("cnn", "Model name in the nets registry.", choices=tuple(nets.names()))
  model_hparams: dict = dataclasses.field(default_factory=dict, metadata={"flag": False})
  # Objective.
  objective: str = _field("classification", "What is minimised.",
                          choices=tuple(sorted(nets.objectives.OBJECTIVES)))
  label_smoothing: float = _field(0.0, "Label smoothing for classification.", lower=0.0)
  mask_rate: float = _field(0.15, "Masked language modelling: fraction of positions to predict.", lower=0.0)
  likelihood: str = _field("bernoulli", "Autoencoders and VAEs: the decoder's likelihood (bernoulli: logits, "
                           "gaussian: means with a learned scale for the VAE, squared error for the autoencoder).",
                           choices=("bernoulli", "gaussian"))
  binarize: bool = _field(False, "Autoencoders and VAEs: binarize inputs on the fly, x ~ Bernoulli(x) "
                          "(dynamic binarization).")
  noise_std: float = _field(0.0, "Denoising autoencoder: std of the Gaussian noise added to training inputs.",
                            lower=0.0)
  iwae_samples: int = _field(100, "VAE evaluation: importance samples k of the IWAE bound (Burda et al.).",
                             lower=1)
  gan_loss: str = _field("non_saturating", "GAN loss.", choices=("non_saturating", "hinge", "wgan_gp"))
  gp_weight: float = _field(10.0, "WGAN-GP gradient-penalty weight.", lower=0.0)
  r1_weight: float = _field(0.0, "R1 penalty weight on the discriminator's gradient at real data "
                            "(Mescheder et al. 2018; 0: off).", lower=0.0)
  pack: int = _field(1, "PacGAN packing: samples the discriminator judges jointly.", lower=1)
  diffusion_steps: int = _field(1000, "Diffusion: noising steps T.", lower=1)
  beta_schedule: str = _field("linear", "Diffusion noise schedule (linear: Ho et al.; cosine: Nichol & Dhariwal).",
                              choices=("linear", "cosine"))
  beta_start: float = _field(1e-4, "Diffusion: first beta of the linear schedule.", lower=0.0)
  beta_end: float = _field(0.02, "Diffusion: last beta of the linear schedule.", lower=0.0)
  sampler: str = _field("ancestral", "Diffusion sampler: DDPM's ancestral sampling (all steps) or DDIM "
                        "(--sample_steps).", choices=("ancestral", "ddim"))
  sample_steps: int = _field(50, "DDIM sampling steps.", lower=1)
  ddim_eta: float = _field(0.0, "DDIM eta (0: deterministic; 1: DDPM's posterior variance).", lower=0.0)
  # Optimizer.
  optimizer: str = _field("adam", "Optax optimizer.", choices=optim.OPTIMIZERS)
  learning_rate: float = _field(1e-2, "Peak learning rate.", lower=0.0)
  schedule: str = _field("constant", "Learning-rate schedule.", choices=optim.SCHEDULES)
  warmup_steps: int = _field(0, "Linear warmup steps.", lower=0)
  min_learning_rate: float = _field(0.0, "Final learning rate of the cosine and linear schedules.", lower=0.0)
  momentum: float = _field(0.9, "Momentum of sgd momentum/nesterov.", lower=0.0)
  b1: float = _field(0.9, "Adam-family beta1.", lower=0.0)
  b2: float = _field(0.999, "Adam-family beta2 (rmsprop: its decay).", lower=0.0)
  eps: float = _field(1e-8, "Adam-family epsilon.", lower=0.0)
  weight_decay: float = _field(0.0, "Weight decay: decoupled for adamw/lamb/lion, an L2 gradient term otherwise.",
                               lower=0.0)
  decay_weights_only: bool = _field(False, "Decay only weight matrices and embeddings, not biases and norms.")
  grad_clip_norm: float = _field(0.0, "Clip gradients to this global norm (0: off).", lower=0.0)
  discriminator_learning_rate: float = _field(0.0, "GANs: the discriminator's peak learning rate (0: "
                                              "--learning_rate). Each player has its own optimizer.", lower=0.0)
  # Loop.
  steps: int = _field(6000, "Training steps.", lower=1)
  log_every: int = _field(100, "Log training metrics every this many steps.", lower=1)
  eval_every: int = _field(250, "Evaluate every this many steps (0: only at the end).", lower=0)
  checkpoint_every: int = _field(1000, "Save a checkpoint every this many steps (0: only at the end).", lower=0)
  keep_checkpoints: int = _field(3, "How many recent checkpoints to keep.", lower=1)
  seed: int = _field(0, "Seed of parameter initialisation, dropout and data order.")
  sample_tokens: int = _field(500, "Language models: tokens of text (WaveNet: audio samples) generated into "
                              "workdir/samples at each evaluation (0: none).", lower=0)
  sample_temperature: float = _field(0.8, "Softmax temperature of those samples (0: greedy).", lower=0.0)
  sample_top_k: int = _field(40, "Sample from the k most likely tokens (0: all).", lower=0)
  num_samples: int = _field(64, "Generative models: samples drawn at each evaluation, written as images or "
                            "plots (the 2D mixtures are scored on them; the papers use 2,500).", lower=1)
  steps_per_dispatch: int = _field(0, "Training steps run per dispatch to the devices (one lax.scan), never "
                                   "across a log, evaluation or checkpoint step. 0: as many as fit in about "
                                   "10 GFLOP (XLA's count), up to the next of those steps.", lower=0)
  device_data_mb: float = _field(512.0, "Hold the training data on every device when it takes at most this "
                                 "many MiB (batches are then cut on the device); larger data is streamed "
                                 "from the host. 0: always stream.", lower=0.0)
  dtype: str = _field("float32", "Compute dtype: bfloat16 runs the model in bfloat16 with float32 parameters, "
                      "optimizer state and losses (mixed precision).", choices=("float32", "bfloat16"))
  matmul_dtype: str = _field("float32", "bfloat16: every matrix product of a float32 model takes bfloat16 "
                             "operands, accumulated and returned in float32, in the backward pass too; "
                             "everything else stays float32 (torch.autocast's treatment of matmuls). On "
                             "CPUs with AMX tiles XLA runs these products several times faster "
                             "(nets/matmul_precision.py).", choices=("float32", "bfloat16"))
  parallel: str = _field("jit", "Data parallelism: jit over a device Mesh, or pmap.", choices=("jit", "pmap"))
  num_devices: int = _field(0, "Local devices to use (0: all).", lower=0)
  cpu_threads: int = _field(0, "Threads of XLA's CPU backend (0: one per core the process may use). Tiny "
                            "models step faster on 1, where handing work between threads costs more than "
                            "it gives. Applied by experiments.run and experiments.bench before JAX starts "
                            "(see experiments.cpu_threads).", lower=0)
  mesh: str = _field("", "Device mesh as AXIS:SIZE pairs over the axes data and fsdp, e.g. data:2,fsdp:2 "
                     "(one size may be -1: the rest). fsdp > 1 splits parameters and optimizer state over "
                     "that many devices. Empty: every device on data.")

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Checks what single flags cannot: names, ranges and cross-field constraints."""
    for f in dataclasses.fields(self):
      meta, value = f.metadata, getattr(self, f.name)
      if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"--{f.name}={value!r} is not one of {', '.join(meta['choices'])}")
      if meta.get("lower") is not None and value < meta["lower"]:
        raise ConfigError(f"--{f.name}={value!r} must be >= {meta['lower']}")
    known = nets.hparams(self.model)
    for name in self.model_hparams:
      if name not in known:
        raise ConfigError(f"model {self.model!r} has no hyperparameter {name!r}; it has: {', '.join(known)}")
    try:  # the model's own checks (names, ranges) before any data is read
      nets.create(self.model, **self.model_hparams)
    except ValueError as e:
      raise ConfigError(f"--model={self.model}: {e}") from None
    if self.warmup_steps > self.steps:
      raise ConfigError(f"--warmup_steps={self.warmup_steps} exceeds --steps={self.steps}")
    if not 0.0 < self.mask_rate < 1.0:
      raise ConfigError(f"--mask_rate={self.mask_rate!r} must be in (0, 1)")
    if self.matmul_dtype == "bfloat16" and self.dtype != "float32":
      raise ConfigError(f"--matmul_dtype=bfloat16 is for float32 models; --dtype={self.dtype} already "
                        "computes every product in that dtype")
    if self.model_hparams.get("attention_kernel") == "cudnn" and self.dtype == "float32":
      raise ConfigError(f"--{self.model}.attention_kernel=cudnn runs in 16 bits: it needs --dtype=bfloat16")
    if self.dataset == "char_text" and self.text_path and not os.path.isfile(os.path.expanduser(self.text_path)):
      raise ConfigError(f"--text_path={self.text_path!r}: no such file (the text of --dataset=char_text)")
    if self.data_dir and not os.path.isdir(os.path.expanduser(self.data_dir)):
      raise ConfigError(f"--data_dir={self.data_dir!r} does not exist")

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)


def _config_fields() -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(Config) if f.metadata.get("flag", True)]


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


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines a flag for every Config field and every model hyperparameter."""
  for f in _config_fields():
    meta = f.metadata
    _define(f.name, f.default, meta["help"], values, flag_default=f.default, choices=meta.get("choices"))
  for model in nets.names():
    for name, f in nets.hparams(model).items():
      default = f.default
      shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
      _define(f"{model}.{name}", default, f"{model} hyperparameter (model default: {shown}).", values)
  flags.DEFINE_string("workdir", "", "Run directory (default: a new folder under runs/). "
                      "A workdir holding a checkpoint resumes from it.", flag_values=values)


def model_hparams_from_flags(model: str, values: flags.FlagValues) -> dict[str, Any]:
  """The `--MODEL.FIELD` flags that were set; setting another model's is an error."""
  hparams = {}
  for model_name in nets.names():
    for name, f in nets.hparams(model_name).items():
      value = values[f"{model_name}.{name}"].value
      if value is None:
        continue
      if model_name != model:
        raise ConfigError(f"--{model_name}.{name} is set but --model={model}; "
                         f"set --{model}.* flags or choose --model={model_name}")
      if isinstance(f.default, tuple):
        value = _parse_tuple(value, f.default)
        if not value:
          raise ConfigError(f"--{model_name}.{name} is empty")
      hparams[name] = value
  return hparams


def from_flags(values: flags.FlagValues = flags.FLAGS) -> Config:
  kwargs = {f.name: values[f.name].value for f in _config_fields()}
  kwargs["model_hparams"] = model_hparams_from_flags(kwargs["model"], values)
  return Config(**kwargs)


def from_workdir(workdir: str) -> Config:
  """The Config a run was trained with, from its workdir/flags.flags."""
  path = os.path.join(workdir, "flags.flags")
  if not os.path.isfile(path):
    raise ConfigError(f"--workdir={workdir!r} has no flags.flags: not a run directory")
  values = flags.FlagValues()
  define_flags(values)
  values(["run", f"--flagfile={path}"])
  return from_flags(values)


def to_flagfile(config: Config) -> str:
  """A flag file that reproduces `config` (every field, model hyperparameters included)."""
  lines = []
  for f in _config_fields():
    value = getattr(config, f.name)
    lines.append(f"--{f.name}={str(value).lower() if isinstance(value, bool) else value}")
  for name, value in config.model_hparams.items():
    if isinstance(value, tuple):
      value = ",".join(map(str, value))
    elif isinstance(value, bool):
      value = str(value).lower()
    lines.append(f"--{config.model}.{name}={value}")
  return "\n".join(lines) + "\n"
