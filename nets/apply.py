"""`Apply`: a model bound to its variables, train/eval mode and randomness.

Objectives receive one and call it like a function: `apply(x)` runs the module's
`__call__`, `apply(z, method="generate")` another method. Each call draws its own dropout
key. `apply.frozen(...)` runs the model with its parameters under `stop_gradient`, so a
loss term differentiates through the model into its inputs but never moves its
parameters (e.g. the generator's loss through a GAN's discriminator).

With a compute `dtype` (mixed precision, e.g. bfloat16) each call casts the floating-point
parameters and inputs to it and the floating-point outputs back to float32: parameters,
their gradients, optimizer state, model state and losses stay float32. With
`matmul_dtype=bfloat16` instead, only the model's matrix products take bfloat16 operands
(accumulated and returned in float32; `nets.matmul_precision`), everything else is float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.matmul_precision import bf16_matmuls


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating-point array of `tree` as `dtype`; other leaves unchanged."""
  def cast(x):
    return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


class Apply:
  """Runs `model` with bound variables and randomness; records updated model state."""

  def __init__(self, model: nn.Module, params: Any, model_state: Any, rng: jax.Array, train: bool,
               dtype: Any = None, matmul_dtype: Any = None):
    self.model, self.params, self.model_state = model, params, model_state
    self.rng, self.train = rng, train
    self.dtype = None if dtype is None or jnp.dtype(dtype) == jnp.float32 else jnp.dtype(dtype)
    bf16_products = matmul_dtype is not None and jnp.dtype(matmul_dtype) == jnp.bfloat16
    if matmul_dtype is not None and not bf16_products and jnp.dtype(matmul_dtype) != jnp.float32:
      raise ValueError(f"matmul_dtype must be float32 or bfloat16; got {matmul_dtype}")
    if bf16_products and self.dtype is not None:
      raise ValueError(f"matmul_dtype=bfloat16 is for float32 models; this one computes in {self.dtype}")
    self._model_apply = bf16_matmuls(model.apply) if bf16_products else model.apply
    self.new_model_state = model_state
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
    if self.dtype is not None:
      params, args, kwargs = cast_floating((params, args, kwargs), self.dtype)
    variables = {"params": params, **self.new_model_state}  # earlier calls' updates (e.g. batch norm) kept
    if self.train and self.model_state:
      out, updated = self._model_apply(variables, *args, train=True, rngs={"dropout": rng},
                                      mutable=list(self.model_state), **kwargs)
      if self.dtype is not None:
        updated = cast_floating(dict(updated), jnp.float32)
      self.new_model_state = {**self.new_model_state, **dict(updated)}
    else:
      out = self._model_apply(variables, *args, train=self.train, rngs={"dropout": rng}, **kwargs)
    return out if self.dtype is None else cast_floating(out, jnp.float32)
