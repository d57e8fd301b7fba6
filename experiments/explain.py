"""Explain a trained run: which parts of its inputs drove its outputs, and how far to trust it.

    python -m experiments.explain --workdir=RUN --method=integrated_gradients,smoothgrad,grad_cam \\
        --examples=8 [--faithfulness] [--sanity=model | --sanity=labels --sanity_workdir=RUN2]

It restores the run's checkpoint (the average, when the run kept one) and attributes its
score for each example's `--target` (by default the class it predicts) on the first
`--examples` of `--split` (the run's test split by default):

- classifiers: the logit of the target class, w.r.t. the input (signals, images);
- language models: the next-token logit after each window of text, w.r.t. the token
  embeddings (integrated gradients; occlusion replaces characters), and, for transformers,
  the attention maps of every layer and head, with their rollout;
- autoencoders and VAEs: a latent unit of the encoder (its mean for a VAE).

Methods: `nets.attribution`. It writes into `--out` (default RUN/explain): attributions.npz
(inputs, targets, predictions, each method's attributions and IG's completeness gaps),
methods.png (examples by methods), one PNG per method, text as HTML, attention grids, and
summary.json (examples/s per method, completeness, the trust checks):

- `--faithfulness`: deletion and insertion curves (positions replaced by the baseline in
  order of attribution) for each method and a random order; areas in faithfulness.md.
- `--sanity=model`: the cascading parameter randomisation of Adebayo et al. (2018): layers
  re-initialised from the output down, with the rank correlation of each method's
  attributions to the trained model's (a method that depends on the model falls toward 0);
  `--sanity=labels`: against a run trained on random labels (`--sanity_workdir`, trained
  with `--label_noise=1`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from experiments import runtime

if __name__ == "__main__":
  runtime.program_start()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.config import ConfigError  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

INPUT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "smoothgrad_squared",
                 "occlusion")
METHODS = INPUT_METHODS + ("grad_cam", "attention")
BASELINES = ("zeros", "mean", "blur", "train")
MAGNITUDE_METHODS = ("gradient", "smoothgrad", "smoothgrad_squared")  # read by magnitude in the deletion order


def define_flags(values: flags.FlagValues = FLAGS) -> None:
  """The command's flags (defined by the command only, so that the module imports as a library)."""
  flags.DEFINE_string("workdir", None, "Run directory holding flags.flags and checkpoints/.", required=True,
                      flag_values=values)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=values)
  flags.DEFINE_list("method", ["integrated_gradients"], f"Attribution methods, any of: {', '.join(METHODS)}.",
                    flag_values=values)
  flags.DEFINE_integer("examples", 8, "Explain the first N examples of --split.", lower_bound=1, flag_values=values)
  flags.DEFINE_string("split", None, "The split to explain (default: the run's --eval_split).", flag_values=values)
  flags.DEFINE_string("target", "predicted", "What to attribute: 'predicted' (the model's top class, next token "
                      "or largest latent unit), 'label' (the example's label or true next token) or a class index.",
                      flag_values=values)
  flags.DEFINE_string("prompt", None, "Language models: explain the next token after this text instead of windows "
                      "of --split.", flag_values=values)
  flags.DEFINE_integer("length", 64, "Language models: tokens per window of --split.", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_integer("steps", 64, "Integrated gradients: integration steps.", lower_bound=1, flag_values=values)
  flags.DEFINE_string("rule", "gausslegendre", "Integrated gradients: gausslegendre, riemann_left, riemann_right, "
                      "riemann_middle or riemann_trapezoid.", flag_values=values)
  flags.DEFINE_enum("baseline", "zeros", BASELINES, "Integrated gradients' baseline (and what deletion puts in): "
                    "zeros, the training mean, the input blurred (--blur), or --baseline_samples training examples "
                    "(a distribution: attributions averaged over them).", flag_values=values)
  flags.DEFINE_float("blur", 5.0, "Gaussian blur's standard deviation in positions for --baseline=blur.", lower_bound=0,
                     flag_values=values)
  flags.DEFINE_integer("baseline_samples", 16, "Training examples drawn for --baseline=train.", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_list("completeness", [], "Integration steps at which to measure completeness as well (e.g. 8,16,32).",
                    flag_values=values)
  flags.DEFINE_integer("samples", 50, "SmoothGrad: noisy samples.", lower_bound=1, flag_values=values)
  flags.DEFINE_float("noise", 0.15, "SmoothGrad: noise standard deviation as a fraction of the input's range.",
                     lower_bound=0, flag_values=values)
  flags.DEFINE_list("window", [], "Occlusion: window per spatial axis (default 3 positions, 3x3 for images, 1 token).",
                    flag_values=values)
  flags.DEFINE_list("stride", [], "Occlusion: stride per spatial axis (default 1).", flag_values=values)
  flags.DEFINE_integer("occlusion_value", 0, "Occlusion of tokens: the token id put in (inputs of reals get 0).",
                       flag_values=values)
  flags.DEFINE_string("layer", None, "Grad-CAM's layer, a Flax path (default: the last convolution).",
                      flag_values=values)
  flags.DEFINE_boolean("faithfulness", False, "Deletion and insertion curves against a random order.",
                       flag_values=values)
  flags.DEFINE_enum("sanity", None, ["model", "labels"], "Sanity checks: cascading model randomisation, or a run "
                    "trained on random labels (--sanity_workdir).", flag_values=values)
  flags.DEFINE_string("sanity_workdir", None, "--sanity=labels: the same model trained on random labels "
                      "(--label_noise=1).",
                      flag_values=values)
  flags.DEFINE_integer("batch_size", 50, "Examples attributed at once, each with its integration steps, noise "
                       "samples or occluded copies (memory grows with it).", lower_bound=1, flag_values=values)
  flags.DEFINE_integer("plot_examples", 4, "Examples drawn in the pictures.", lower_bound=0, flag_values=values)
  flags.DEFINE_integer("seed", 0, "Seed of SmoothGrad's noise, baselines, random orders and re-initialisation.",
                       flag_values=values)
  flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain).", flag_values=values)


@dataclasses.dataclass
class Subject:
  """What is explained: a restored run's model as a function of a batch of inputs, and examples."""
  kind: str  # "signal", "image" or "tokens"
  fn_for: Callable[..., Callable[[Any], Any]]  # (params, plain, state) -> (inputs [n, ...] -> scores)
  x: Any
  labels: Any  # [n] or None
  target: Any  # [n]
  prediction: Any  # [n]
  titles: list[str]
  restored: Any
  plain_model: Any = None  # the model as `plain` calls run it (attention computed densely, so it is sown)
  decode: Callable[[Any], list[str]] | None = None

  def fn(self, params: Any = None, plain: bool = False, state: Any = None) -> Callable[[Any], Any]:
    """The model's scores as a function of its inputs, computed as the run computed them
    (`build.model_call`: the same values, some operations computed the way this platform
    runs them fast) or, `plain`, by `model.apply` as it is (for the methods that intercept
    the model's layers). `state`: other model variables (batch statistics) than the run's."""
    return self.fn_for(self.restored.params if params is None else params, plain,
                       self.restored.model_state if state is None else state)

  @property
  def channels_last(self) -> bool:
    return self.kind == "image" or (self.kind == "signal" and self.x.ndim == 3)


def _read_examples(config, source, split: str, n: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments import data  # pylint: disable=g-import-not-at-top
  xs, ys = [], []
  for batch in data.EvalBatches(config, source.builder, split):
    keep = batch["mask"].astype(bool)
    xs.append(batch["x"][keep])
    ys.append(batch["y"][keep] if "y" in batch else None)
    if sum(len(x) for x in xs) >= n:
      break
  x = np.concatenate(xs)[:n]
  y = np.concatenate(ys)[:n] if ys[0] is not None else None
  return x, y


def _targets(flag: str, predicted, labels, num: int, what: str):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if flag == "predicted":
    return np.asarray(predicted)
  if flag == "label":
    if labels is None:
      raise ConfigError("--target=label: these examples have no labels; use --target=predicted or an index")
    return np.asarray(labels)
  try:
    index = int(flag)
  except ValueError:
    raise ConfigError(f"--target must be 'predicted', 'label' or an index; got {flag!r}") from None
  if not 0 <= index < num:
    raise ConfigError(f"--target={index}: the model has {num} {what} (0..{num - 1})")
  return np.full(len(predicted), index)


def subject(restored, *, split: str | None, examples: int, target: str, prompt: str | None, length: int) -> Subject:
  """The model function and the examples of a restored run, by its objective."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  config, source, model = restored.config, restored.source, restored.model
  split = split or config.eval_split

  # The same function computed densely: cuDNN's kernel runs on NVIDIA GPUs only, and attention
  # weights are sown where attention is one dense (or masked) product.
  dense = {k: v for k, v in (("attention_kernel", "xla"), ("sparse_impl", "masked")) if getattr(model, k, v) != v}
  plain_model = model.clone(**dense) if dense else model

  def forward(params, state, x, plain, **kwargs):
    variables = {"params": params, **(state or {})}
    if plain or plain_model is not model:
      return plain_model.apply(variables, x, **kwargs)
    return restored.call(variables, x, **kwargs)

  if config.objective == "classification":
    fn_for = lambda p, plain=False, state=None: (lambda x: forward(p, state, x, plain))
    x, labels = _read_examples(config, source, split, examples)
    x = jnp.asarray(x, jnp.float32)
    logits = fn_for(restored.params, False, restored.model_state)(x)
    prediction = np.asarray(jnp.argmax(logits, -1))
    tgt = _targets(target, prediction, labels, int(logits.shape[-1]), "classes")
    kind = "signal" if x.ndim in (2, 3) else "image"
    titles = [f"#{i} label {labels[i] if labels is not None else '?'} pred {prediction[i]}" for i in range(len(x))]
    return Subject(kind, fn_for, x, labels, tgt, prediction, titles, restored, plain_model)

  if config.objective == "lm":
    fn_for = lambda p, plain=False, state=None: (lambda t: forward(p, state, t, plain)[:, -1])
    tokenizer = source.tokenizer
    if source.text is None:
      raise ConfigError(f"explain reads language models of text; --dataset={config.dataset} is not text")
    if prompt is not None:
      try:
        x = np.asarray(tokenizer.encode(prompt))[None]
      except ValueError as e:
        raise ConfigError(f"--prompt: {e}") from None
      labels = None
    else:
      if split not in source.text.tokens:
        raise ConfigError(f"--split={split}: the run's text has splits {sorted(source.text.tokens)}")
      tokens = np.asarray(source.text.tokens[split])
      if len(tokens) < (length + 1) * examples:
        raise ConfigError(f"--split={split} has {len(tokens)} tokens, too few for {examples} windows of {length}")
      starts = np.arange(examples) * (length + 1)
      x = np.stack([tokens[s:s + length] for s in starts])
      labels = tokens[starts + length]
    max_len = getattr(model, "max_len", 0)
    if max_len and x.shape[1] > max_len:
      raise ConfigError(f"the text is {x.shape[1]} tokens; the model reads at most {max_len} (--length or --prompt)")
    x = jnp.asarray(x, jnp.int32)
    fn = fn_for(restored.params, False, restored.model_state)
    logits = fn(x)
    prediction = np.asarray(jnp.argmax(logits, -1))
    tgt = _targets(target, prediction, labels, int(logits.shape[-1]), "tokens")
    decode = lambda ids: [tokenizer.decode([int(i)]) for i in ids]
    titles = [f"#{i} next: {decode([tgt[i]])[0]!r} (predicted {decode([prediction[i]])[0]!r}"
              + (f", true {decode([labels[i]])[0]!r})" if labels is not None else ")") for i in range(len(x))]
    return Subject("tokens", fn_for, x, labels, tgt, prediction, titles, restored, plain_model, decode=decode)

  if hasattr(model, "encode") and config.objective in ("elbo", "reconstruction"):
    def fn_for(p, plain=False, state=None):
      def fn(x):
        z = forward(p, state, x, plain, method="encode")
        return z[0] if isinstance(z, tuple) else z  # a VAE's mean
      return fn
    x, labels = _read_examples(config, source, split, examples)
    x = jnp.asarray(x, jnp.float32)
    fn = fn_for(restored.params, False, restored.model_state)
    z = fn(x)
    prediction = np.asarray(jnp.argmax(jnp.abs(z), -1))
    if target == "label":
      raise ConfigError("--target=label: an encoder has no classes; use --target=predicted (the latent unit of "
                        "largest magnitude) or a latent unit's index")
    tgt = _targets(target, prediction, None, int(z.shape[-1]), "latent units")
    kind = "signal" if x.ndim in (2, 3) else "image"
    titles = [f"#{i} latent unit {tgt[i]}" for i in range(len(x))]
    return Subject(kind, fn_for, x, labels, tgt, prediction, titles, restored, plain_model)

  raise ConfigError(f"explain needs a classifier, a language model or an encoder; the run in question has "
                    f"--objective={config.objective}")


def _spatial_ints(flag: list[str], name: str, ndim: int, default: int) -> tuple[int, ...]:
  if not flag:
    return (default,) * ndim
  try:
    values = tuple(int(v) for v in flag)
  except ValueError:
    raise ConfigError(f"--{name} must be integers; got {','.join(flag)}") from None
  if len(values) == 1:
    values *= ndim
  if len(values) != ndim or min(values) < 1:
    raise ConfigError(f"--{name} needs {ndim} positive integer(s), one per spatial axis; got {','.join(flag)}")
  return values


def _blurred(x, sigma: float, spatial_axes: tuple[int, ...]):
  """x blurred with a Gaussian of `sigma` positions along its spatial axes (edges repeated)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  sigmas = [sigma if axis in spatial_axes else 0.0 for axis in range(x.ndim)]
  return ndimage.gaussian_filter(np.asarray(x), sigmas, mode="nearest", truncate=3.0)


class Explainer:
  """Computes each method on a Subject with the command's settings."""

  def __init__(self, s: Subject, opts: dict[str, Any]):
    import jax  # pylint: disable=g-import-not-at-top
    from nets import attribution  # pylint: disable=g-import-not-at-top
    self.s, self.o, self.attr = s, opts, attribution
    self.key = jax.random.key(opts["seed"])
    self.baseline, self.baselines = None, None
    if s.kind != "tokens":
      spatial = tuple(range(1, s.x.ndim - (1 if s.channels_last else 0)))
      if opts["baseline"] in ("mean", "train"):  # up to 1,000 training inputs, read only for these
        config = s.restored.config
        pool, _ = _read_examples(config, s.restored.source, config.train_split, 1000)
        pool = jax.numpy.asarray(pool, jax.numpy.float32)
      if opts["baseline"] == "mean":
        self.baseline = pool.mean(0)
      elif opts["baseline"] == "blur":
        self.baseline = _blurred(s.x, opts["blur"], spatial)
      elif opts["baseline"] == "train":
        pick = jax.random.choice(jax.random.fold_in(self.key, 1), len(pool), (opts["baseline_samples"],),
                                 replace=opts["baseline_samples"] > len(pool))
        self.baselines = pool[pick]
      self.deletion_baseline = self.baselines.mean(0) if self.baselines is not None else self.baseline
    else:
      self.deletion_baseline = None
    self.layers = attribution.layers(s.fn(plain=True), s.x)

  # Method by method.
  def check(self, method: str) -> None:
    """One line naming why a method does not apply to this model, before any compute."""
    s = self.s
    if method not in METHODS:
      raise ConfigError(f"--method={method}: unknown; choose from {', '.join(METHODS)}")
    if s.kind == "tokens" and method in ("gradient", "gradient_x_input", "smoothgrad", "smoothgrad_squared",
                                         "grad_cam"):
      raise ConfigError(f"--method={method} needs real-valued inputs; this model reads tokens: use "
                        "integrated_gradients (on the token embeddings), occlusion or attention")
    if method == "grad_cam":
      self.cam_layer()
    if method == "attention":
      self.attention()
    if method == "integrated_gradients" and s.kind == "tokens":
      self.embedding_layer()
      if self.o["baseline"] != "zeros":
        raise ConfigError(f"--baseline={self.o['baseline']}: token attributions start from zero embeddings "
                          "(--baseline=zeros)")
    if method == "occlusion":
      spatial = s.x.shape[1:-1] if s.channels_last else s.x.shape[1:]
      window = _spatial_ints(self.o["window"], "window", len(spatial), 1 if s.kind == "tokens" else 3)
      _spatial_ints(self.o["stride"], "stride", len(spatial), 1)
      if any(w > n for w, n in zip(window, spatial)):
        raise ConfigError(f"--window={','.join(map(str, window))} is larger than the input {list(spatial)}")

  def embedding_layer(self) -> str:
    embeds = [l.path for l in self.layers if l.kind == "Embed"]
    if not embeds:
      raise ConfigError("integrated gradients of tokens needs an nn.Embed layer (for rnn_lm: --rnn_lm.embed_dim > 0; "
                        "or use --method=occlusion); the model's layers: " + ", ".join(l.path for l in self.layers))
    return embeds[0]

  def cam_layer(self) -> str:
    """--layer, or the last top-level layer with spatial axes (a convolution, or a residual
    block's output) of a model with convolutions."""
    names = [l.path for l in self.layers]
    spatial = [l.path for l in self.attr.spatial_layers(self.s.fn(plain=True), self.s.x) if l.kind != "Dropout"]
    if not any(l.kind.startswith("Conv") for l in self.layers):
      raise ConfigError(f"--method=grad_cam needs a convolutional layer; {self.s.restored.config.model} has "
                        f"none (its layers: {', '.join(names)})")
    if self.o["layer"] is not None:
      if self.o["layer"] not in names:
        raise ConfigError(f"--layer={self.o['layer']}: no such layer; the model's layers: {', '.join(names)}")
      if self.o["layer"] not in spatial:
        raise ConfigError(f"--layer={self.o['layer']}: Grad-CAM needs a layer with spatial axes; those with them: "
                          f"{', '.join(spatial) or 'none'}")
      return self.o["layer"]
    return [p for p in spatial if "/" not in p][-1]

  def attention(self):
    """Each attention layer's weights for the examples, and their rollout."""
    model = self.s.plain_model
    variables = {"params": self.s.restored.params, **(self.s.restored.model_state or {})}
    try:
      maps = self.attr.attention_maps(model, variables, self.s.x)
    except ValueError as e:
      raise ConfigError(f"--method=attention: {e}") from None
    self_maps = [m for name, m in maps.items() if "cross" not in name]
    return maps, self.attr.attention_rollout(self_maps)

  def compute(self, method: str, params=None, x=None, target=None, state=None):
    """(attributions, IG's completeness gaps or None) for the examples (or other x), with the
    run's parameters and model state (or `params`, `state`)."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    s, o, attr = self.s, self.o, self.attr
    x, target = s.x if x is None else x, s.target if target is None else target
    fn = s.fn(params, plain=method == "grad_cam" or s.kind == "tokens", state=state)
    bs = o["batch_size"]
    if s.kind == "tokens":
      if method == "integrated_gradients":
        return attr.layer_integrated_gradients(fn, x, target, self.embedding_layer(), steps=o["steps"],
                                               method=o["rule"], batch_size=bs)
      if method == "occlusion":
        window = _spatial_ints(o["window"], "window", 1, 1)
        stride = _spatial_ints(o["stride"], "stride", 1, 1)
        return attr.occlusion(fn, x, target, window=window, stride=stride, value=o["occlusion_value"],
                              channels_last=False, batch_size=bs), None
    if method == "gradient":
      return attr.gradient(fn, x, target, batch_size=bs), None
    if method == "gradient_x_input":
      return attr.gradient_x_input(fn, x, target, batch_size=bs), None
    if method == "integrated_gradients":
      return attr.integrated_gradients(fn, x, target, baseline=self.baseline, baselines=self.baselines,
                                       steps=o["steps"], method=o["rule"], batch_size=bs)
    if method in ("smoothgrad", "smoothgrad_squared"):
      return attr.smoothgrad(fn, x, target, jax.random.fold_in(self.key, 2), samples=o["samples"], noise=o["noise"],
                             squared=method == "smoothgrad_squared", batch_size=bs), None
    if method == "occlusion":
      ndim = x.ndim - 1 - (1 if s.channels_last else 0)
      window = _spatial_ints(o["window"], "window", ndim, 3)
      stride = _spatial_ints(o["stride"], "stride", ndim, 1)
      return attr.occlusion(fn, x, target, window=window, stride=stride, channels_last=s.channels_last,
                            batch_size=bs), None
    if method == "grad_cam":
      cam = attr.grad_cam(fn, x, target, self.cam_layer(), batch_size=bs)
      spatial = x.shape[1:-1] if s.channels_last else x.shape[1:]
      cam = attr.upsample(cam, tuple(spatial))
      return jnp.broadcast_to(cam[..., None] if s.channels_last else cam, x.shape), None  # as every method's
    raise AssertionError(method)

  def timed(self, method: str):
    """The attributions, the gaps, and examples/s of a second (compiled) call."""
    import jax  # pylint: disable=g-import-not-at-top
    run = jax.jit(lambda x, t: self.compute(method, x=x, target=t))
    start = time.perf_counter()
    jax.block_until_ready(run(self.s.x, self.s.target))
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(run(self.s.x, self.s.target))
    seconds = time.perf_counter() - start
    return out, {"examples_per_s": len(self.s.x) / seconds, "seconds": seconds, "first_call_s": first}


def _relative_gaps(s: Subject, explainer: Explainer, gaps):
  """|gap| / |f(x) - f(baseline)| per example."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = jnp.arange(len(s.x))
  fn = s.fn(plain=s.kind == "tokens")
  f_x = fn(s.x)[rows, s.target]
  if s.kind == "tokens":
    layer = explainer.embedding_layer()
    run = explainer.attr.with_layer(fn, layer, replace=jnp.zeros_like)
    f_b = run(s.x)[rows, s.target]
  elif explainer.baselines is not None:
    f_b = fn(explainer.baselines)[:, s.target].mean(0)
  else:
    base = jnp.broadcast_to(jnp.asarray(explainer.baseline if explainer.baseline is not None else 0.0), s.x.shape)
    f_b = fn(base)[rows, s.target]
  return np.abs(np.asarray(gaps)) / np.maximum(np.abs(np.asarray(f_x - f_b)), 1e-12)


def _completeness(rel) -> dict[str, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {"median_relative_gap": float(np.median(rel)), "max_relative_gap": float(np.max(rel)),
          "fraction_within_1pct": float(np.mean(rel < 0.01))}


def faithfulness(explainer: Explainer, maps: dict[str, Any], out: str) -> dict[str, dict[str, float]]:
  """Deletion and insertion areas per method and for a random order; writes the curves' PNGs
  and a table. Positions are taken in decreasing order of attribution, or of its magnitude for
  the sensitivity maps (gradient, SmoothGrad: a large negative gradient matters as much as a
  large positive one); both orders are in the returned rows."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments import attribution_plots  # pylint: disable=g-import-not-at-top
  s = explainer.s
  run = jax.jit(lambda x, t, a: explainer.attr.deletion_insertion(
      s.fn(), x, t, a, baseline=explainer.deletion_baseline, channels_last=s.channels_last,
      batch_size=explainer.o["batch_size"]))

  def areas(a):
    deletion, insertion = (np.asarray(c) for c in run(s.x, s.target, a))
    n = len(deletion)
    return ({"deletion_auc": float(deletion.mean()), "deletion_auc_sem": float(deletion.mean(1).std() / n**0.5),
             "insertion_auc": float(insertion.mean()), "insertion_auc_sem": float(insertion.mean(1).std() / n**0.5)},
            deletion.mean(0), insertion.mean(0))

  table, deletion_lines, insertion_lines = {}, {}, {}
  for name, a in maps.items():
    signed, d, i = areas(a)
    magnitude, d_abs, i_abs = areas(jnp.abs(a))
    by_magnitude = name in MAGNITUDE_METHODS
    table[name] = {**(magnitude if by_magnitude else signed), "order": "magnitude" if by_magnitude else "signed",
                   "signed": signed, "magnitude": magnitude}
    deletion_lines[name], insertion_lines[name] = (d_abs, i_abs) if by_magnitude else (d, i)
  random, d, i = areas(jax.random.uniform(jax.random.fold_in(explainer.key, 3), s.x.shape))
  table["random"] = {**random, "order": "random"}
  deletion_lines["random"], insertion_lines["random"] = d, i
  fractions = np.linspace(0, 1, len(d))
  title = f"{s.restored.config.model}, {len(s.x)} examples"
  attribution_plots.curves(os.path.join(out, "deletion.png"), fractions, deletion_lines,
                           "probability of the target", f"Deletion ({title}); lower is more faithful")
  attribution_plots.curves(os.path.join(out, "insertion.png"), fractions, insertion_lines,
                           "probability of the target", f"Insertion ({title}); higher is more faithful")
  lines = ["| method (order) | deletion AUC (lower is better) | insertion AUC (higher is better) |", "|---|---|---|"]
  for name, row in table.items():
    lines.append(f"| {name} ({row['order']}) | {row['deletion_auc']:.3f} ± {row['deletion_auc_sem']:.3f} | "
                 f"{row['insertion_auc']:.3f} ± {row['insertion_auc_sem']:.3f} |")
  with open(os.path.join(out, "faithfulness.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return table


def sanity_model(explainer: Explainer, methods: list[str], maps: dict[str, Any], out: str) -> dict[str, Any]:
  """Cascading randomisation: per layer (output first), each method's mean Spearman rank
  correlation with the trained model's attributions (of absolute values, and signed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments import attribution_plots  # pylint: disable=g-import-not-at-top
  s, attr = explainer.s, explainer.attr
  restored = s.restored
  fresh = restored.model.init(jax.random.fold_in(explainer.key, 4), s.x[:1])["params"]
  result: dict[str, Any] = {"layers": [], "spearman_abs": {m: [] for m in methods},
                            "spearman": {m: [] for m in methods}, "constant_maps": {m: [] for m in methods}}
  order = attr.call_order(s.fn(plain=True), s.x, restored.params)
  for layer, params in attr.randomized_top_down(restored.params, fresh, order):
    result["layers"].append(layer)
    for m in methods:
      a, _ = jax.jit(lambda x, t, m=m, p=params: explainer.compute(m, params=p, x=x, target=t))(s.x, s.target)
      trained = maps[m].reshape(len(s.x), -1)
      rho = attr.spearman(jnp.abs(trained), jnp.abs(a))  # NaN where a map is constant (e.g. all zero)
      result["spearman_abs"][m].append(float(jnp.nanmean(rho)))
      result["spearman"][m].append(float(jnp.nanmean(attr.spearman(trained, a))))
      result["constant_maps"][m].append(int(jnp.isnan(rho).sum()))
  attribution_plots.sanity(os.path.join(out, "sanity_model.png"), result["layers"],
                           {m: np.asarray(v) for m, v in result["spearman_abs"].items()},
                           f"Cascading randomisation ({restored.config.model}, {len(s.x)} examples)")
  lines = ["| layers randomised (from the output) | " + " | ".join(methods) + " |",
           "|---|" + "---|" * len(methods)]
  for i, layer in enumerate(result["layers"]):
    lines.append(f"| ... {layer} | " + " | ".join(f"{result['spearman_abs'][m][i]:.3f}" for m in methods) + " |")
  with open(os.path.join(out, "sanity_model.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return result


def sanity_labels(explainer: Explainer, methods: list[str], maps: dict[str, Any], other_workdir: str,
                  step: int | None) -> dict[str, Any]:
  """Each method's mean Spearman correlation with the same method on a run trained on
  random labels (same examples, same targets), with that run's own model state."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments import build  # pylint: disable=g-import-not-at-top
  other = build.restore(other_workdir, step)
  s = explainer.s
  if other.config.model != s.restored.config.model or other.config.dataset != s.restored.config.dataset:
    raise ConfigError(f"--sanity_workdir={other_workdir} trains {other.config.model} on {other.config.dataset}; "
                      f"the run explained trains {s.restored.config.model} on {s.restored.config.dataset}")
  out = {"workdir": other_workdir, "spearman_abs": {}, "spearman": {}}
  for m in methods:
    a, _ = jax.jit(lambda x, t, m=m: explainer.compute(m, params=other.params, x=x, target=t,
                                                       state=other.model_state))(s.x, s.target)
    trained = maps[m].reshape(len(s.x), -1)
    out["spearman_abs"][m] = float(jnp.nanmean(explainer.attr.spearman(jnp.abs(trained), jnp.abs(a))))
    out["spearman"][m] = float(jnp.nanmean(explainer.attr.spearman(trained, a)))
  return out


def explain(workdir: str, methods: list[str], opts: dict[str, Any], out: str | None = None) -> dict[str, Any]:
  """Runs the command on a run (the module docstring); returns what summary.json holds."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from experiments import attribution_plots, build  # pylint: disable=g-import-not-at-top
  from nets import attribution  # pylint: disable=g-import-not-at-top

  if not methods:
    raise ConfigError(f"--method: choose at least one of {', '.join(METHODS)}")
  for m in methods:
    if m not in METHODS:
      raise ConfigError(f"--method={m}: unknown; choose from {', '.join(METHODS)}")
  for steps in [str(opts["steps"])] + list(opts["completeness"]):
    try:
      attribution.rule(opts["rule"], int(steps))
    except ValueError as e:  # (an unknown rule, too few steps for it, or not a number)
      raise ConfigError(f"--rule={opts['rule']} with {steps} steps (--steps, --completeness): {e}") from None
  if opts["sanity"] == "labels" and not opts["sanity_workdir"]:
    raise ConfigError("--sanity=labels needs --sanity_workdir: a run trained on random labels (--label_noise=1)")
  if not (epath.Path(workdir) / "flags.flags").exists():
    raise ConfigError(f"--workdir={workdir}: no run there (no flags.flags)")
  restored = build.restore(workdir, opts["step"])
  s = subject(restored, split=opts["split"], examples=opts["examples"], target=opts["target"],
              prompt=opts["prompt"], length=opts["length"])
  explainer = Explainer(s, opts)
  for m in methods:
    explainer.check(m)
  if (opts["faithfulness"] or opts["sanity"]) and s.kind == "tokens":
    raise ConfigError("--faithfulness and --sanity measure attributions of signals and images; this run reads tokens")
  if opts["faithfulness"] and restored.config.objective != "classification":
    raise ConfigError("--faithfulness tracks the probability of a class; the run is not a classifier "
                      f"(--objective={restored.config.objective})")
  out = out or os.path.join(workdir, "explain")
  os.makedirs(out, exist_ok=True)

  summary: dict[str, Any] = {"workdir": workdir, "model": restored.config.model, "examples": int(len(s.x)),
                             "target": opts["target"], "methods": {}}
  maps, arrays = {}, {"x": np.asarray(s.x), "target": np.asarray(s.target), "prediction": np.asarray(s.prediction)}
  if s.labels is not None:
    arrays["label"] = np.asarray(s.labels)
  for m in methods:
    if m == "attention":
      att, rollout = explainer.attention()
      for name, w in att.items():
        arrays[f"attention/{name}"] = np.asarray(w)
      arrays["attention/rollout"] = np.asarray(rollout)
      if opts["plot_examples"]:
        labels = s.decode(np.asarray(s.x[0])) if s.decode else [str(int(t)) for t in np.asarray(s.x[0])]
        attribution_plots.attention_grid(os.path.join(out, "attention.png"),
                                         {k: np.asarray(v[0]) for k, v in att.items()}, np.asarray(rollout[0]), labels)
      summary["methods"][m] = {"layers": list(att)}
      continue
    (a, gaps), timing = explainer.timed(m)
    maps[m] = a
    arrays[m] = np.asarray(a)
    summary["methods"][m] = timing
    if gaps is not None:
      arrays[f"{m}/gap"] = np.asarray(gaps)
      summary["methods"][m]["completeness"] = {
          "steps": opts["steps"], "rule": opts["rule"], **_completeness(_relative_gaps(s, explainer, gaps))}
  if "integrated_gradients" in methods and opts["completeness"]:
    table = {}
    for steps in (int(v) for v in opts["completeness"]):
      sub = Explainer(s, {**opts, "steps": steps})
      (_, gaps), _ = sub.timed("integrated_gradients")
      table[str(steps)] = _completeness(_relative_gaps(s, sub, gaps))
    summary["methods"]["integrated_gradients"]["completeness_by_steps"] = table
  np.savez_compressed(os.path.join(out, "attributions.npz"), **arrays)

  n = min(opts["plot_examples"], len(s.x))
  if n and maps:
    if s.kind == "tokens":
      for m, a in maps.items():
        texts = [s.decode(np.asarray(t)) for t in np.asarray(s.x[:n])]
        attribution_plots.text_png(os.path.join(out, f"{m}.png"), texts, np.asarray(a[:n]), s.titles[:n])
        attribution_plots.text_html(os.path.join(out, f"{m}.html"), texts, np.asarray(a[:n]), s.titles[:n])
    else:
      x = np.asarray(s.x[:n])
      shown = {m: np.asarray(a[:n]) for m, a in maps.items()}
      attribution_plots.methods_grid(os.path.join(out, "methods.png"), s.kind, x, shown, s.titles[:n])
      for m, a in shown.items():
        attribution_plots.methods_grid(os.path.join(out, f"{m}.png"), s.kind, x, {m: a}, s.titles[:n])

  trust = [m for m in maps]
  if opts["faithfulness"]:
    summary["faithfulness"] = faithfulness(explainer, maps, out)
  if opts["sanity"] == "model":
    summary["sanity_model"] = sanity_model(explainer, trust, maps, out)
  elif opts["sanity"] == "labels":
    summary["sanity_labels"] = sanity_labels(explainer, trust, maps, opts["sanity_workdir"], None)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def defaults(**overrides: Any) -> dict[str, Any]:
  """The command's options at their defaults (for calling `explain` as a library)."""
  values = flags.FlagValues()
  define_flags(values)
  values(["explain", "--workdir=."])
  return {**options(values), **overrides}


def options(values) -> dict[str, Any]:
  names = ("step", "examples", "split", "target", "prompt", "length", "steps", "rule", "baseline", "blur",
           "baseline_samples", "completeness", "samples", "noise", "window", "stride", "occlusion_value", "layer",
           "faithfulness", "sanity", "sanity_workdir", "batch_size", "plot_examples", "seed")
  return {n: values[n].value for n in names}


def main() -> None:
  summary = explain(FLAGS.workdir, FLAGS.method, options(FLAGS), FLAGS.out)
  for m, row in summary["methods"].items():
    line = f"{m}: "
    if "examples_per_s" in row:
      line += f"{row['examples_per_s']:.1f} examples/s"
    if "completeness" in row:
      c = row["completeness"]
      line += (f"; completeness gap median {100 * c['median_relative_gap']:.3f}%, "
               f"{100 * c['fraction_within_1pct']:.1f}% of examples within 1%")
    print(line)
  for name, row in summary.get("faithfulness", {}).items():
    print(f"faithfulness {name}: deletion AUC {row['deletion_auc']:.3f}, insertion AUC {row['insertion_auc']:.3f}")
  print(f"wrote {FLAGS.out or os.path.join(FLAGS.workdir, 'explain')}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
