"""`Apply`: a model bound to its variables, train/eval mode and randomness.

Objectives receive one and call it like a function: `apply(x)` runs the module's
`__call__`, `apply(z, method="generate")` another method. Each call draws its own dropout
key (the bound key folded with the call's number). Calls in training mode record the
model's updated state (e.g. batch statistics) in `new_model_state`, and later calls see it.
`apply.frozen(...)` runs the model with its parameters under `stop_gradient`, so a loss term
differentiates through the model into its inputs but never moves its parameters (e.g. the
generator's loss through a GAN's discriminator).

`call` replaces `model.apply` (same signature): the trainer passes one that casts to a
compute dtype, or computes some operations another way (`experiments.build.model_call`).
"""

from typing import Any, Callable

import flax.linen as nn
import jax


class Apply:
  """Runs `model` with bound variables and randomness; records updated model state."""

  def __init__(self, model: nn.Module, params: Any, model_state: Any, rng: jax.Array, train: bool,
               call: Callable[..., Any] | None = None):
    self.model, self.params, self.model_state = model, params, model_state
    self.rng, self.train = rng, train
    self.new_model_state = model_state
    self._call = call or model.apply
    self._calls = 0

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, **self.model_state}

  def __call__(self, *args, **kwargs):
    return self._run(self.params, *args, **kwargs)

  def frozen(self, *args, **kwargs):
    """Like calling, with the parameters held constant for differentiation."""
    return self._run(jax.lax.stop_gradient(self.params), *args, **kwargs)

  def _run(self, params, *args, **kwargs):
    rng = jax.random.fold_in(self.rng, self._calls)  # distinct randomness per call
    self._calls += 1
    variables = {"params": params, **self.new_model_state}  # earlier calls' updates (e.g. batch norm) kept
    if self.train and self.model_state:
      out, updated = self._call(variables, *args, train=True, rngs={"dropout": rng},
                                mutable=list(self.model_state), **kwargs)
      self.new_model_state = {**self.new_model_state, **dict(updated)}
      return out
    return self._call(variables, *args, train=self.train, rngs={"dropout": rng}, **kwargs)
