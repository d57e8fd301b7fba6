"""Write a trained run's inference function for serving, without this project's code.

    python -m experiments.export --workdir=RUN --out=DIR [--step=N] [--batch_size=0] \\
        [--platforms=cpu] [--saved_model=auto] [--overwrite]

It restores the run's checkpoint (the parameters' average, when the run kept one) and writes
into `--out`:
- `model.jax_exported`: the function serialised by `jax.export` (StableHLO), lowered for
  `--platforms` (default the CPU; e.g. `cpu,cuda,tpu` for one file that runs on each). Its
  first argument is the model's variables, the rest its inputs, so the parameters are not
  constants of the program;
- `params.msgpack`: those variables, `{"params": ..., "batch_stats": ...}` (every collection
  the model keeps, e.g. batch normalisation's statistics), by `flax.serialization`;
- `export.json`: the model, dataset, step, the inputs' and outputs' names, shapes (the
  symbolic batch `b`) and dtypes, and what the function computes;
- `saved_model/` (where TensorFlow is installed; `--saved_model=on|off|auto`): the same
  function as a TensorFlow SavedModel through `jax2tf`, the parameters as `tf.Variable`s,
  with a `serving_default` signature for TF Serving.

The batch size is symbolic (`--batch_size=0`, any batch at call time) or fixed
(`--batch_size=N`); token sequences also have a symbolic length (`t`, and `s` for a
sequence-to-sequence model's source), at most the model's `max_len` where it has one; a
program that needs its lengths (sparse attention's block masks) gets the run's, fixed, and
export.json's `note` says so. What is exported, per objective (`INFERENCE`):
- classification: `x` -> `logits`; regression: `x` -> `predictions`;
- lm (GPT, RNN LM, WaveNet), mlm (BERT): `tokens` [b, t] -> `logits` [b, t, vocabulary]:
  the next-token logits after each position (BERT's: each position's own, the mask token
  being id = the data's vocabulary size);
- seq2seq: `source` [b, s], `target_in` [b, t] -> `logits` [b, t, vocabulary]: the decoder
  reads BOS and the target shifted right; greedy decoding calls it once per token;
- reconstruction (autoencoders), elbo (VAE): `x` -> `reconstruction` in data space (the
  probabilities of a Bernoulli likelihood, the means of a Gaussian; a VAE decodes the mean of
  q(z|x));
- gan: `z` [b, latent_dim] (and `y` [b], the class, for a conditional model) -> `samples`,
  the generator; the discriminator is not exported;
- ddpm: `x_t` [b, *data shape], `t` [b] (int32, 0-based timestep) (and `y` [b]) ->
  `eps`, the denoiser's predicted noise: one step of a sampler, which the caller runs with
  the schedule in export.json (`objective_hparams`); images are diffused in [-1, 1].

Load it back with `load(DIR)` below (jax and flax only: `jax.export.deserialize`, then
`exported.call(flax.serialization.msgpack_restore(...), *inputs)`, as export.json's `call`
says), or the SavedModel with `tf.saved_model.load`; `_stablehlo_readable_by_tensorflow`
says how the SavedModel's program is made readable by TensorFlow's older StableHLO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

EXPORTED, PARAMS, INFO, SAVED_MODEL = "model.jax_exported", "params.msgpack", "export.json", "saved_model"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
SAVED_MODEL_CHOICES = ("auto", "on", "off")


def define_flags(values: flags.FlagValues = FLAGS) -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "Run directory holding flags.flags and checkpoints/.", required=True,
                      flag_values=values)
  flags.DEFINE_string("out", None, "Output directory (new, or empty; see --overwrite).", required=True,
                      flag_values=values)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=values)
  flags.DEFINE_integer("batch_size", 0, "The batch size the function takes: 0 for any (a symbolic batch), or N.",
                       lower_bound=0, flag_values=values)
  flags.DEFINE_list("platforms", ["cpu"], f"Platforms to lower for, any of: {', '.join(PLATFORMS)}.",
                    flag_values=values)
  flags.DEFINE_enum("saved_model", "auto", SAVED_MODEL_CHOICES,
                    "Also write a TensorFlow SavedModel (auto: where TensorFlow is installed).", flag_values=values)
  flags.DEFINE_boolean("overwrite", False, "Replace what an earlier export wrote into --out.", flag_values=values)


# ----------------------------------------------------------------------------------- inference


class Input(NamedTuple):
  name: str
  shape: tuple[Any, ...]  # per example (without the batch): ints, or a symbolic name ("t") with its bound
  dtype: str


class Inference(NamedTuple):
  """What is exported: fn(variables, *inputs) -> output, with the inputs' names, shapes and dtypes."""

  fn: Callable[..., Any]
  inputs: tuple[Input, ...]
  output: str
  description: str
  constraints: tuple[str, ...] = ()  # symbolic dimensions' bounds, e.g. "t <= 64"
  lengths: dict[str, int] | None = None  # each symbolic length's size where a program needs fixed ones

  def fixed(self) -> Inference:
    """The same with the token lengths fixed (those of the run's training examples)."""
    lengths = self.lengths or {}
    inputs = tuple(i._replace(shape=tuple(lengths.get(d, d) if isinstance(d, str) else d for d in i.shape))
                   for i in self.inputs)
    return self._replace(inputs=inputs, constraints=(), lengths=None)


def _tokens(model: Any, dim: str) -> tuple[tuple[Any, ...], tuple[str, ...]]:
  """The per-example shape of a token sequence of symbolic length `dim`, and its bound (the
  model's `max_len`, where it has one)."""
  max_len = int(getattr(model, "max_len", 0) or 0)
  return (dim,), ((f"{dim} <= {max_len}",) if max_len else ())


def inference(restored: Any, call: Callable[..., Any]) -> Inference:
  """The function of `restored` (build.Restored) worth serving, per objective (module docstring),
  running the model by `call` (model.apply, or the run's mixed-precision form)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from nets.apply import Apply  # pylint: disable=g-import-not-at-top

  config, model, objective, example = restored.config, restored.model, restored.objective, restored.source.example
  kind = config.objective
  x = example["x"]
  data = (tuple(int(d) for d in x.shape[1:]), str(x.dtype))

  def forward(variables, *inputs, **kwargs):
    return call(variables, *inputs, train=False, **kwargs)

  def bound(variables):  # what objectives call: the model bound to its variables, evaluation mode
    return Apply(model, variables["params"], {k: v for k, v in variables.items() if k != "params"},
                 jax.random.key(0), train=False, call=call)

  if kind in ("classification", "regression"):
    return Inference(forward, (Input("x", *data),), "logits" if kind == "classification" else "predictions",
                     "the model's output on inputs x (evaluation mode: dropout off, batch norm's running statistics)")
  if kind in ("lm", "mlm"):
    shape, bounds = _tokens(model, "t")
    what = ("the logits of the next token after each position" if kind == "lm" else
            "each position's token logits (masked positions hold the mask token)")
    return Inference(forward, (Input("tokens", shape, "int32"),), "logits", what, bounds, {"t": x.shape[1]})
  if kind == "seq2seq":
    source, source_bounds = _tokens(model, "s")
    target, target_bounds = _tokens(model, "t")
    return Inference(forward, (Input("source", source, "int32"), Input("target_in", target, "int32")), "logits",
                     f"the logits of each target token given the source and the target so far (target_in: "
                     f"bos_id={objective.bos_id} then the target shifted right)", source_bounds + target_bounds,
                     {"s": x.shape[1], "t": example["y"].shape[1]})
  if kind in ("reconstruction", "elbo"):
    def reconstruct(variables, inputs):
      return objective.reconstruct(bound(variables), inputs, jax.random.key(0))
    return Inference(reconstruct, (Input("x", data[0], "float32"),), "reconstruction",
                     "the reconstruction of x in data space" + (" (decoding the mean of q(z|x))" if kind == "elbo"
                                                                 else ""))
  classes = int(getattr(model, "num_classes", 0) or 0)
  labels = (Input("y", (), "int32"),) if classes else ()
  if kind == "gan":
    def generate(variables, z, *y):
      return forward(variables, z, *y, method="generate").astype(jnp.float32)
    return Inference(generate, (Input("z", (int(model.latent_dim),), "float32"), *labels), "samples",
                     "the generator: samples G(z) for latent codes z ~ N(0, I)" +
                     (f" and classes y in [0, {classes})" if classes else ""))
  if kind == "ddpm":
    def denoise(variables, x_t, t, *y):
      return forward(variables, x_t, t, *y).astype(jnp.float32)
    space = " (images diffused as 2 x - 1, in [-1, 1])" if len(data[0]) == 3 else ""
    return Inference(denoise, (Input("x_t", data[0], "float32"), Input("t", (), "int32"), *labels), "eps",
                     f"the denoiser: the noise predicted in x_t at 0-based timesteps t{space}; a sampler calls it "
                     "once per step")
  raise ConfigError(f"--objective={kind}: no inference function to export; exportable: {', '.join(INFERENCE)}")


INFERENCE = ("classification", "regression", "lm", "mlm", "seq2seq", "reconstruction", "elbo", "gan", "ddpm")


# -------------------------------------------------------------------------------------- export


def _symbolic_specs(inf: Inference, batch_size: int) -> list[Any]:
  """The inputs' jax.ShapeDtypeStructs: batch `b` (or `batch_size`) and the named dimensions in one scope."""
  import jax  # pylint: disable=g-import-not-at-top
  names = ["b"] if not batch_size else []
  for i in inf.inputs:
    names += [d for d in i.shape if isinstance(d, str) and d not in names]
  dims = dict(zip(names, jax.export.symbolic_shape(", ".join(names), constraints=inf.constraints))) if names else {}
  batch = dims["b"] if not batch_size else batch_size
  return [jax.ShapeDtypeStruct((batch, *(dims[d] if isinstance(d, str) else d for d in i.shape)), i.dtype)
          for i in inf.inputs]


def _describe(shape: Sequence[Any]) -> list[Any]:
  return [d if isinstance(d, int) else str(d) for d in shape]


def _check(workdir: str, out: str, step: int | None, platforms: Sequence[str], saved_model: str,
           overwrite: bool) -> Any:
  """Bad input as one line, before anything is restored; returns the run's config."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from experiments import checkpoint, config as config_lib  # pylint: disable=g-import-not-at-top

  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ConfigError(f"--platforms={','.join(platforms)}: choose one or more of {', '.join(PLATFORMS)}")
  if saved_model not in SAVED_MODEL_CHOICES:
    raise ConfigError(f"--saved_model={saved_model}: choose one of {', '.join(SAVED_MODEL_CHOICES)}")
  if saved_model == "on" and not _has_tensorflow():
    raise ConfigError("--saved_model=on needs TensorFlow (pip install tensorflow-cpu), which is not installed")
  if not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir}: no such directory")
  if not os.path.exists(os.path.join(workdir, "flags.flags")):
    raise ConfigError(f"--workdir={workdir}: no run there (no flags.flags)")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConfigError(f"--out={out} is a file; name a directory")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ConfigError(f"--out={out} is not empty; name a new directory, or pass --overwrite to replace an export "
                      "there")
  config = config_lib.from_workdir(workdir)
  if config.objective not in INFERENCE:
    raise ConfigError(f"--objective={config.objective}: no inference function to export; exportable: "
                      f"{', '.join(INFERENCE)}")
  directory = epath.Path(workdir) / "checkpoints"
  steps = checkpoint.saved_steps(directory)
  if not steps:
    raise ConfigError(f"--workdir={workdir}: no checkpoint in {directory}")
  if step is not None and step not in steps:
    raise ConfigError(f"--step={step}: no checkpoint of that step in {directory}; there are: "
                      f"{', '.join(map(str, steps))}")
  return config


def _has_tensorflow() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("tensorflow") is not None


def export(workdir: str, out: str, step: int | None = None, batch_size: int = 0,
           platforms: Sequence[str] = ("cpu",), saved_model: str = "auto", overwrite: bool = False) -> dict[str, Any]:
  """Writes the run's inference function into `out` (module docstring); returns export.json's contents."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import nets  # pylint: disable=g-import-not-at-top
  from experiments import build  # pylint: disable=g-import-not-at-top

  platforms = [p.strip() for p in platforms if p.strip()]
  config = _check(workdir, out, step, platforms, saved_model, overwrite)
  start = time.perf_counter()
  restored = build.restore(workdir, step)
  # The run's mixed precision, without the CPU's rewrites (the same values, for fast training
  # steps there): the program may run on another platform.
  call = build.model_call(restored.model, config, platform="any")
  inf = inference(restored, call)
  variables = jax.device_get({"params": restored.params, **restored.model_state})
  variables = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
  like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  note = None
  try:
    specs = _symbolic_specs(inf, batch_size)
    exported = jax.export.export(jax.jit(inf.fn), platforms=platforms)(like, *specs)
  except Exception as e:  # pylint: disable=broad-except
    if not inf.lengths:
      raise
    # A program that needs its token lengths (e.g. sparse attention's block masks, made with
    # numpy): the run's lengths, fixed.
    note = f"token lengths fixed: the program needs them ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    inf = inf.fixed()
    specs = _symbolic_specs(inf, batch_size)
    exported = jax.export.export(jax.jit(inf.fn), platforms=platforms)(like, *specs)
  export_s = time.perf_counter() - start

  os.makedirs(out, exist_ok=True)
  for name in (EXPORTED, PARAMS, INFO, SAVED_MODEL):  # an earlier export's, with --overwrite
    path = os.path.join(out, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  with open(os.path.join(out, EXPORTED), "wb") as f:
    f.write(exported.serialize())
  with open(os.path.join(out, PARAMS), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(variables))

  info = {
      "model": config.model, "objective": config.objective, "dataset": config.dataset,
      "workdir": os.path.abspath(workdir), "step": restored.step,
      "inputs": [{"name": i.name, "shape": _describe(s.shape), "dtype": i.dtype} for i, s in zip(inf.inputs, specs)],
      "output": {"name": inf.output, "shape": _describe(exported.out_avals[0].shape),
                 "dtype": str(exported.out_avals[0].dtype)},
      "constraints": list(inf.constraints), "computes": inf.description, "platforms": list(exported.platforms),
      "variables": sorted(variables), "num_params": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
      "dtype": config.dtype,  # (of the computation: parameters, inputs and outputs are as listed)
      "model_hparams": _plain({f: getattr(restored.model, f) for f in nets.hparams(config.model)}),
      "objective_hparams": _plain(dataclasses.asdict(restored.objective)),
      "vocabulary": _vocabulary(restored.source),
      "call": (f"exported = jax.export.deserialize(open('{EXPORTED}', 'rb').read()); variables = "
               f"flax.serialization.msgpack_restore(open('{PARAMS}', 'rb').read()); "
               f"{inf.output} = exported.call(variables, {', '.join(i.name for i in inf.inputs)})"),
      "files": [EXPORTED, PARAMS, INFO], "export_s": round(export_s, 3),
  }
  if note:
    info["note"] = note
  if saved_model == "on" or (saved_model == "auto" and _has_tensorflow()):
    start = time.perf_counter()
    write_saved_model(inf, variables, specs, platforms, os.path.join(out, SAVED_MODEL))
    info["files"].append(SAVED_MODEL)
    info["saved_model_s"] = round(time.perf_counter() - start, 3)
    info["saved_model_signature"] = "serving_default"
  with open(os.path.join(out, INFO), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
  return info


def _plain(value: Any) -> Any:
  """A JSON-writable copy (tuples as lists)."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _vocabulary(source: Any) -> Any:
  """The characters or words whose ids the tokens are, where the data has a vocabulary."""
  tokenizer = getattr(source, "tokenizer", None)
  if tokenizer is None:
    return None
  try:
    words = [tokenizer.decode([i]) for i in range(tokenizer.size)]
  except Exception:  # pylint: disable=broad-except  (a tokenizer without per-id text)
    return None
  return words if all(isinstance(w, str) for w in words) else None  # (not audio's mu-law levels)


def write_saved_model(inf: Inference, variables: Any, specs: Sequence[Any], platforms: Sequence[str],
                      path: str) -> None:
  """`inf` as a TensorFlow SavedModel in `path` through jax2tf (native serialisation), the
  variables as tf.Variables, with a `serving_default` signature whose inputs are named as
  `inf.inputs` and whose output is `{inf.output: ...}`."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  def poly(spec):
    return "(" + ", ".join(str(d) for d in spec.shape) + ")"

  converted = jax2tf.convert(jax.jit(inf.fn), polymorphic_shapes=[None, *(poly(s) for s in specs)],
                             polymorphic_constraints=inf.constraints, with_gradient=False,
                             native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.variables_tree = tf.nest.map_structure(tf.Variable, variables)
  signature = [tf.TensorSpec([None if not isinstance(d, int) else d for d in s.shape], tf.as_dtype(s.dtype),
                             name=i.name) for i, s in zip(inf.inputs, specs)]

  @tf.function(autograph=False, input_signature=signature)
  def serve(*inputs):
    return {inf.output: converted(module.variables_tree, *inputs)}

  module.serve = serve
  with _stablehlo_readable_by_tensorflow():  # (jax2tf serialises the program when `serve` is traced)
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(p) for p in text.split("."))


@contextlib.contextmanager
def _stablehlo_readable_by_tensorflow() -> Iterator[None]:
  """jax2tf's programs, serialised so that this TensorFlow reads and runs them.

  JAX serialises for StableHLO consumers up to 4 weeks older than itself (jax 0.10.2:
  StableHLO 1.15.0); TensorFlow's XlaCallModule reads its own version and older (TF 2.21:
  1.13.7). Ops without a StableHLO form (CHLO's, e.g. the `erf` of an exact GELU) are written
  as composites, whose newer form the older reader rejects ("unregistered operation
  'vhlo.composite_v2'") and whose bodies, in the older form, its shape refinement leaves with
  symbolic shapes ("Module has dynamic shapes"). Within this context each program jax2tf
  serialises has those ops expanded into plain StableHLO first (the same expansions the
  composites' bodies hold) and is written for TensorFlow's version: JAX's private serialiser
  is swapped for one that does so. Where TensorFlow's version is not older, or either is
  unknown, nothing changes."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    from jax._src.export import _export  # pylint: disable=g-import-not-at-top
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    from jax._src.lib.mlir import ir, passmanager  # pylint: disable=g-import-not-at-top
    from jax._src.lib.mlir.dialects import hlo  # pylint: disable=g-import-not-at-top
    from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo  # pylint: disable=g-import-not-at-top
    ours = hlo.get_version_from_compatibility_requirement(hlo.StablehloCompatibilityRequirement.WEEK_4)
    theirs = tf_stablehlo.get_current_version()
    original = _export._module_to_bytecode  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    yield
    return
  if _version(theirs) >= _version(ours):
    yield
    return
  hlo.register_stablehlo_passes()

  def to_bytecode(module):
    with module.context:
      module = ir.Module.parse(module.operation.get_asm(enable_debug_info=True))  # (a copy)
      passmanager.PassManager.parse("builtin.module(func.func(chlo-legalize-to-stablehlo), "
                                    "func.func(shape-legalize-to-stablehlo))").run(module.operation)
    return _jax.mlir.serialize_portable_artifact(module, theirs, xla_bridge.get_backend().serialize_with_sdy)

  _export._module_to_bytecode = to_bytecode  # pylint: disable=protected-access
  try:
    yield
  finally:
    _export._module_to_bytecode = original  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------- load


class Served:
  """An export loaded back: `served(*inputs)` -> the output, with the variables bound.

  `exported` (a jax.export.Exported), `variables` (the parameters and model state, as
  written) and `info` (export.json) are its attributes."""

  def __init__(self, exported: Any, variables: Any, info: dict[str, Any]):
    self.exported, self.variables, self.info = exported, variables, info

  def __call__(self, *inputs: Any) -> Any:
    check_inputs(self.info, [getattr(x, "shape", ()) for x in inputs])
    return self.exported.call(self.variables, *inputs)


def check_inputs(info: dict[str, Any], shapes: Sequence[Sequence[int]]) -> None:
  """ValueError, in one line, where `shapes` do not fit the inputs of export.json's `info`."""
  specs = info["inputs"]
  if len(shapes) != len(specs):
    raise ValueError(f"{len(shapes)} inputs given; the function takes {len(specs)}: "
                     f"{', '.join(i['name'] for i in specs)}")
  sizes: dict[str, int] = {}
  for spec, shape in zip(specs, shapes):
    want = spec["shape"]
    fits = len(shape) == len(want)
    for d, n in zip(want, shape) if fits else ():
      fits = fits and (n == d if isinstance(d, int) else sizes.setdefault(d, n) == n)
    if not fits:
      raise ValueError(f"{spec['name']}: shape {tuple(shape)} does not fit [{', '.join(map(str, want))}]"
                       + (f" (with {', '.join(f'{k}={v}' for k, v in sizes.items())})" if sizes else ""))
  for constraint in info.get("constraints", ()):
    name, bound = (p.strip() for p in constraint.split("<="))
    if name in sizes and sizes[name] > int(bound):
      raise ValueError(f"{name}={sizes[name]} is beyond the model's bound {constraint}")


def load(directory: str | os.PathLike) -> Served:
  """The function an export wrote into `directory`, its variables bound: `load(DIR)(x)`.
  Needs jax and flax only, not this project's models."""
  import flax.serialization  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  with open(os.path.join(directory, EXPORTED), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with open(os.path.join(directory, PARAMS), "rb") as f:
    variables = jax.device_put(flax.serialization.msgpack_restore(f.read()))
  with open(os.path.join(directory, INFO), encoding="utf-8") as f:
    info = json.load(f)
  return Served(exported, variables, info)


def main() -> None:
  info = export(FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.batch_size, FLAGS.platforms, FLAGS.saved_model,
                FLAGS.overwrite)
  inputs = ", ".join(f"{i['name']} {i['dtype']}[{', '.join(map(str, i['shape']))}]" for i in info["inputs"])
  out = info["output"]
  print(f"{info['model']} ({info['objective']}, step {info['step']}): {inputs} -> {out['name']} "
        f"{out['dtype']}[{', '.join(map(str, out['shape']))}] for {', '.join(info['platforms'])}")
  print(f"wrote {', '.join(info['files'])} into {FLAGS.out} (export {info['export_s']:.1f} s"
        + (f", SavedModel {info['saved_model_s']:.1f} s)" if "saved_model_s" in info else ")"))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
