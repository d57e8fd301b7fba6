"""Transformers: multi-head attention, the pre-LayerNorm block, and three models.

- `gpt`: a decoder-only language model (token + learned position embeddings, causal
  self-attention, optional weight tying), after GPT-2 / nanoGPT. Its causal attention can
  be dense or one of the Sparse Transformer patterns (`nets.sparse_attention`).
- `bert`: a bidirectional encoder with a masked-language-model head or a classification
  head, with padding masks.
- `encoder_decoder`: the sequence-to-sequence Transformer (Vaswani et al. 2017), pre-LN.

Every model takes integer tokens. With `decode=True` a model keeps a key/value cache in
the "cache" collection and consumes a few tokens per call (see `nets.decoding`), so
generation costs one position per token instead of re-running the whole prefix.
GELU is exact (gpt: or GPT-2's tanh approximation, `gelu="tanh"`) and LayerNorm's epsilon
1e-5, as in nanoGPT. Initialisation follows GPT-2: N(0, 0.02) weights, zero biases, and the projections back
into the residual stream scaled by 1/sqrt(2 * layers).
"""


import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import activations, sparse_attention
from nets.registry import register

Array = jax.Array
_STD = 0.02
_LN_EPS = 1e-5  # PyTorch's, as in GPT-2 and BERT


def _dense(features, use_bias: bool, name: str, std: float = _STD, axis: int = -1) -> nn.DenseGeneral:
  return nn.DenseGeneral(features, axis=axis, use_bias=use_bias, name=name,
                         kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros)


def _split(x: Array, axis: int = -3) -> list[Array]:
  """The slices of `x` along `axis`: q, k, v of the fused projection (as nanoGPT splits its
  c_attn), whose gradient is one concatenation."""
  return [a.squeeze(axis) for a in jnp.split(x, x.shape[axis], axis=axis)]


class MultiHeadAttention(nn.Module):
  """Self-attention (causal or bidirectional) or cross-attention over `context`.

  Causal self-attention follows `pattern` ("dense", "strided", "fixed"); sparse patterns
  are computed blocked (cost ~ n sqrt(n)) or as a masked dense product (`sparse_impl`).
  With `decode=True` (causal self-attention only) keys and values are cached for
  `max_len` positions and each call appends its tokens. Attention computed densely (dense
  or masked sparse patterns, cross-attention) sows its weights [batch, heads, queries, keys]
  as "attention_weights" in the "intermediates" collection (`nets.attribution.attention_maps`).
  """

  num_heads: int
  causal: bool = False
  dropout: float = 0.0
  use_bias: bool = True
  out_std: float = _STD
  pattern: str = "dense"
  sparse_block: int = 0
  sparse_local: int = 0
  sparse_summary: int = 1
  sparse_impl: str = "blocked"
  decode: bool = False
  max_len: int = 0
  kernel: str = "xla"  # dense causal self-attention: "xla" (any platform) or "cudnn" (fused, NVIDIA GPUs)

  def _sparse(self) -> dict[str, Any]:
    return {"block": self.sparse_block, "local": self.sparse_local or None, "summary": self.sparse_summary}

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None, mask: Array | None = None,
               train: bool = False) -> Array:
    embed = x.shape[-1]
    if self.sparse_impl not in ("blocked", "masked"):
      raise ValueError(f"MultiHeadAttention.sparse_impl must be 'blocked' or 'masked'; got {self.sparse_impl!r}")
    if embed % self.num_heads:
      raise ValueError(f"embedding size {embed} is not divisible by {self.num_heads} heads")
    head_dim = embed // self.num_heads
    if context is None:
      q, k, v = _split(_dense((3, self.num_heads, head_dim), self.use_bias, "qkv")(x))
    else:
      q = _dense((self.num_heads, head_dim), self.use_bias, "query")(x)
      k, v = _split(_dense((2, self.num_heads, head_dim), self.use_bias, "kv")(context))
    rate = self.dropout if train else 0.0

    if self.kernel == "cudnn":
      _check_cudnn(self.causal, self.pattern, rate, mask, context)
    if self.decode and context is None:
      out = self._cached(q, k, v)
    elif self.kernel == "cudnn" and not self.is_initializing():  # (init may run in float32: same shapes)
      out = _cudnn_causal(q, k, v)
    elif self.causal and context is None and self.pattern != "dense" and self.sparse_impl == "blocked" and not rate:
      pad = (-x.shape[1]) % self.sparse_block  # blocked attention runs on whole blocks
      q, k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (q, k, v))
      out = sparse_attention.attention(q, k, v, self.pattern, impl=self.sparse_impl, **self._sparse())
      out = out[:, :x.shape[1]]  # causal: the padding at the end changed nothing before it
    else:
      if self.causal and context is None:
        pos = jnp.arange(x.shape[1])
        causal = sparse_attention.allowed(self.pattern, pos[:, None], pos[None, :], **self._sparse())
        mask = causal if mask is None else jnp.logical_and(mask, causal)
      out, weights = sparse_attention.dense_attention(q, k, v, mask, dropout=rate, return_weights=True,
                                                     dropout_rng=self.make_rng("dropout") if rate else None)
      # Read by nets.attribution.attention_maps (apply with mutable=["intermediates"]); a
      # no-op otherwise, and XLA drops the unused weights.
      self.sow("intermediates", "attention_weights", weights)
    return _dense(embed, self.use_bias, "out", std=self.out_std, axis=(-2, -1))(out)

  def _cached(self, q: Array, k: Array, v: Array) -> Array:
    """Appends k, v at the cache index and attends over every cached position so far."""
    if not self.causal:
      raise ValueError("decode=True needs causal self-attention")
    batch, length, heads, head_dim = k.shape
    shape = (batch, self.max_len or length, heads, head_dim)
    key = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
    value = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if self.is_initializing():  # model.init: create the cache, attend as in training
      pos = jnp.arange(length)
      return sparse_attention.dense_attention(q, k, v, sparse_attention.allowed(
          self.pattern, pos[:, None], pos[None, :], **self._sparse()))
    i = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k, (0, i, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v, (0, i, 0, 0))
    index.value = i + length
    q_pos = i + jnp.arange(length)
    k_pos = jnp.arange(key.value.shape[1])
    mask = sparse_attention.allowed(self.pattern, q_pos[:, None], k_pos[None, :], **self._sparse())
    return sparse_attention.dense_attention(q, key.value, value.value, mask)


def _check_cudnn(causal: bool, pattern: str, rate: float, mask: Array | None, context: Array | None) -> None:
  if not causal or context is not None or mask is not None or pattern != "dense" or rate:
    raise ValueError("the cudnn attention kernel computes dense causal self-attention without a padding mask "
                     f"or attention dropout; got causal={causal}, pattern={pattern!r}, dropout={rate}, "
                     f"mask={mask is not None}, context={context is not None}")


def _cudnn_causal(q: Array, k: Array, v: Array) -> Array:
  """Dense causal self-attention in cuDNN's fused kernel (flash attention: the [T, T] scores
  never reach memory); it wants 16-bit inputs."""
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"the cudnn attention kernel needs bfloat16 or float16 inputs (--dtype=bfloat16); got {q.dtype}")
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


GELUS = ("exact", "tanh")


class MLP(nn.Module):
  """Dense(ratio * width) -> GELU -> Dense(width). `gelu`: "exact" (erf), or "tanh", the
  approximation GPT-2 was trained with, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

  ratio: int = 4
  use_bias: bool = True
  out_std: float = _STD
  gelu: str = "exact"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    fc = _dense(self.ratio * width, self.use_bias, "fc")
    proj = _dense(width, self.use_bias, "proj", std=self.out_std)
    h = fc(x)
    return proj(jax.nn.gelu(h, approximate=True) if self.gelu == "tanh" else activations.gelu_exact(h))


class Block(nn.Module):
  """Pre-LayerNorm Transformer block: x + attn(LN x) [+ cross-attn(LN x, context)] + MLP(LN x)."""

  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  use_bias: bool = True
  num_layers: int = 1  # of the whole stack, for the residual-projection init scale
  causal: bool = False
  cross: bool = False
  attention: dict | None = None  # extra MultiHeadAttention fields (pattern, decode...)
  gelu: str = "exact"  # the MLP's: "exact" or "tanh"

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, context: Array | None = None,
               context_mask: Array | None = None, train: bool = False) -> Array:
    out_std = _STD / math.sqrt(2 * self.num_layers)
    drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(h)
    norm = lambda name: nn.LayerNorm(epsilon=_LN_EPS, use_bias=self.use_bias, name=name)
    h = MultiHeadAttention(self.num_heads, causal=self.causal, dropout=self.dropout, use_bias=self.use_bias,
                           out_std=out_std, name="attention", **(self.attention or {}))(
                               norm("ln_attention")(x), mask=mask, train=train)
    x = x + drop(h)
    if self.cross:
      h = MultiHeadAttention(self.num_heads, dropout=self.dropout, use_bias=self.use_bias, out_std=out_std,
                             name="cross_attention")(norm("ln_cross")(x), context, context_mask, train)
      x = x + drop(h)
    h = MLP(self.mlp_ratio, self.use_bias, out_std, self.gelu, name="mlp")(norm("ln_mlp")(x))
    return x + drop(h)


# A Block that keeps only its input for the backward pass and recomputes the rest there
# (rematerialisation: activation memory of one block instead of all of them). Its call
# arguments are positional: x, mask, context, context_mask, train (static).
RematBlock = nn.remat(Block, static_argnums=(5,))

PATTERNS = sparse_attention.PATTERNS
IMPLS = ("blocked", "masked")
KERNELS = ("xla", "cudnn")


def _check(owner: str, module: nn.Module) -> None:
  checks = [
      ("vocab_size", module.vocab_size >= 1, "must be positive (it is set from the data by the trainer)"),
      ("num_layers", module.num_layers >= 1, "must be positive"),
      ("num_heads", module.num_heads >= 1, "must be positive"),
      ("embed_dim", module.embed_dim >= 1 and module.embed_dim % max(module.num_heads, 1) == 0,
       f"must be a positive multiple of num_heads={module.num_heads}"),
      ("max_len", module.max_len >= 1, "must be positive (the trainer sets it from the data when 0)"),
      ("dropout", 0.0 <= module.dropout < 1.0, "must be in [0, 1)"),
  ]
  for name, ok, why in checks:
    if not ok:
      raise ValueError(f"{owner}.{name} {why}; got {getattr(module, name)!r}")


class _Embed(nn.Module):
  """Token plus learned position embeddings; positions continue from the cache in decode mode."""

  vocab_size: int
  max_len: int
  embed_dim: int
  decode: bool = False

  def setup(self):
    init = nn.initializers.normal(_STD)
    self.tokens = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=init, name="tokens")
    self.positions = nn.Embed(self.max_len, self.embed_dim, embedding_init=init, name="positions")
    if self.decode:
      self.position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))

  def __call__(self, tokens: Array) -> Array:
    length = tokens.shape[1]
    start = 0
    if self.decode:
      start = self.position.value
      if not self.is_initializing():
        self.position.value = start + length
    elif length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
    return self.tokens(tokens) + self.positions(start + jnp.arange(length))[None]

  def attend(self, x: Array) -> Array:
    return self.tokens.attend(x)


class _Transformer(nn.Module):
  """The hyperparameters every model here shares. `vocab_size` and `max_len` (the longest
  sequence) are set from the data by the trainer when left at 0."""

  vocab_size: int = 0
  max_len: int = 0
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_ratio: int = 4
  dropout: float = 0.0
  use_bias: bool = True
  remat: bool = False  # recompute each block's activations in the backward pass (less memory, ~1/3 more compute)

  def _block(self, *args, **kwargs) -> nn.Module:
    """A Block, rematerialised when training with `remat` (never while decoding)."""
    remat = self.remat and not getattr(self, "decode", False)
    return (RematBlock if remat else Block)(*args, **kwargs)


@register("gpt")
class GPT(_Transformer):
  """Decoder-only Transformer language model: tokens [B, T] -> next-token logits [B, T, V].

  `attention` picks the causal pattern: "dense", or the Sparse Transformer's "strided"
  (stride `sparse_block`, local window `sparse_local`, default the stride) or "fixed"
  (blocks of `sparse_block`, the last `sparse_summary` positions of each earlier block
  visible); `sparse_impl` computes it "blocked" (n sqrt(n)) or "masked" (dense with a mask).
  `gelu="tanh"` gives the MLPs GPT-2's tanh-approximate GELU (pretrained GPT-2 weights,
  `nets.gpt2`); the default is the exact one.
  """

  tie_embeddings: bool = True
  gelu: str = "exact"  # the MLPs' GELU: "exact" (erf) or "tanh" (GPT-2's approximation)
  attention: str = "dense"
  sparse_block: int = 0
  sparse_local: int = 0
  sparse_summary: int = 1
  sparse_impl: str = "blocked"
  attention_kernel: str = "xla"  # "cudnn": cuDNN's fused (flash) kernel on NVIDIA GPUs; dense, no dropout, bf16
  decode: bool = False

  def __post_init__(self):
    if self.vocab_size and self.max_len:  # 0 until the trainer fills them from the data
      _check("GPT", self)
    if self.attention_kernel not in KERNELS:
      raise ValueError(f"GPT.attention_kernel must be one of {', '.join(KERNELS)}; got {self.attention_kernel!r}")
    if self.attention_kernel == "cudnn" and (self.attention != "dense" or self.dropout):
      raise ValueError("GPT.attention_kernel='cudnn' computes dense attention without dropout; got "
                       f"attention={self.attention!r}, dropout={self.dropout}")
    if self.gelu not in GELUS:
      raise ValueError(f"GPT.gelu must be one of {', '.join(GELUS)}; got {self.gelu!r}")
    if self.attention not in PATTERNS:
      raise ValueError(f"GPT.attention must be one of {', '.join(PATTERNS)}; got {self.attention!r}")
    if self.sparse_impl not in IMPLS:
      raise ValueError(f"GPT.sparse_impl must be one of {', '.join(IMPLS)}; got {self.sparse_impl!r}")
    if self.attention != "dense" and self.sparse_block < 1:
      raise ValueError(f"GPT.sparse_block must be positive for attention={self.attention!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens: Array, train: bool = False) -> Array:
    _check("GPT", self)
    embed = _Embed(self.vocab_size, self.max_len, self.embed_dim, self.decode, name="embed")
    x = nn.Dropout(self.dropout, deterministic=not train)(embed(tokens))
    attention = {"pattern": self.attention, "sparse_block": self.sparse_block, "sparse_local": self.sparse_local,
                 "sparse_summary": self.sparse_summary, "sparse_impl": self.sparse_impl,
                 "decode": self.decode, "max_len": self.max_len,
                 "kernel": "xla" if self.decode else self.attention_kernel}
    for i in range(self.num_layers):
      x = self._block(self.num_heads, self.mlp_ratio, self.dropout, self.use_bias, self.num_layers, causal=True,
                      attention=attention, gelu=self.gelu, name=f"block{i}")(x, None, None, None, train)
    x = nn.LayerNorm(epsilon=_LN_EPS, use_bias=self.use_bias, name="ln_final")(x)
    if self.tie_embeddings:
      return embed.attend(x)
    return _dense(self.vocab_size, False, "head")(x)


@register("bert")
class BERT(_Transformer):
  """Bidirectional Transformer encoder: tokens [B, T] -> MLM logits [B, T, V] or class logits.

  `head="mlm"`: a BERT-style transform (Dense, GELU, LayerNorm) and the output projection
  tied to the token embeddings plus a bias. `head="classify"`: mean of the unpadded
  positions' final states -> Dense(num_outputs). Tokens equal to `pad_id` (if >= 0) are
  masked out of attention.
  """

  head: str = "mlm"
  num_outputs: int = 2
  pad_id: int = -1

  def __post_init__(self):
    if self.vocab_size and self.max_len:
      _check("BERT", self)
    if self.head not in ("mlm", "classify"):
      raise ValueError(f"BERT.head must be mlm or classify; got {self.head!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens: Array, train: bool = False) -> Array:
    _check("BERT", self)
    valid = tokens != self.pad_id if self.pad_id >= 0 else jnp.ones(tokens.shape, bool)
    embed = _Embed(self.vocab_size, self.max_len, self.embed_dim, name="embed")
    x = nn.Dropout(self.dropout, deterministic=not train)(embed(tokens))
    mask = valid[:, None, None, :]  # [B, 1, 1, Tk]: no query attends padding
    for i in range(self.num_layers):
      x = self._block(self.num_heads, self.mlp_ratio, self.dropout, self.use_bias, self.num_layers,
                      name=f"block{i}")(x, mask, None, None, train)
    x = nn.LayerNorm(epsilon=_LN_EPS, use_bias=self.use_bias, name="ln_final")(x)
    if self.head == "classify":
      w = valid[..., None].astype(x.dtype)
      pooled = jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
      return _dense(self.num_outputs, True, "classifier")(pooled)
    x = activations.gelu_exact(_dense(self.embed_dim, True, "mlm_transform")(x))
    x = nn.LayerNorm(epsilon=_LN_EPS, use_bias=self.use_bias, name="mlm_norm")(x)
    bias = self.param("mlm_bias", nn.initializers.zeros, (self.vocab_size,))
    return embed.attend(x) + bias


@register("encoder_decoder")
class EncoderDecoder(_Transformer):
  """Sequence-to-sequence Transformer over one shared vocabulary with padding id `pad_id`.

  `__call__(source [B, S], target_in [B, T])` -> logits [B, T, V] for the next target
  token (teacher forcing); `encode` and `decode_tokens` are its two halves, used by
  greedy decoding in `nets.decoding`. With `target_in=None` (initialisation) the decoder
  reads one position. `num_layers` counts the encoder's blocks.
  """

  num_layers: int = 3
  num_decoder_layers: int = 3
  pad_id: int = 0
  decode: bool = False

  def __post_init__(self):
    if self.vocab_size and self.max_len:
      _check("EncoderDecoder", self)
    if self.num_decoder_layers < 1:
      raise ValueError(f"EncoderDecoder.num_decoder_layers must be positive; got {self.num_decoder_layers!r}")
    super().__post_init__()

  def setup(self):
    _check("EncoderDecoder", self)
    self.source_embed = _Embed(self.vocab_size, self.max_len, self.embed_dim, name="source_embed")
    self.target_embed = _Embed(self.vocab_size, self.max_len, self.embed_dim, self.decode, name="target_embed")
    self.encoder = [self._block(self.num_heads, self.mlp_ratio, self.dropout, self.use_bias, self.num_layers,
                                name=f"encoder{i}") for i in range(self.num_layers)]
    self.encoder_norm = nn.LayerNorm(epsilon=_LN_EPS, use_bias=self.use_bias)
    attention = {"decode": self.decode, "max_len": self.max_len}
    self.decoder = [self._block(self.num_heads, self.mlp_ratio, self.dropout, self.use_bias, self.num_decoder_layers,
                                causal=True, cross=True, attention=attention, name=f"decoder{i}")
                    for i in range(self.num_decoder_layers)]
    self.decoder_norm = nn.LayerNorm(epsilon=_LN_EPS, use_bias=self.use_bias)
    self.dropout_layer = nn.Dropout(self.dropout)

  def encode(self, source: Array, train: bool = False) -> Array:
    mask = (source != self.pad_id)[:, None, None, :]
    x = self.dropout_layer(self.source_embed(source), deterministic=not train)
    for block in self.encoder:
      x = block(x, mask, None, None, train)
    return self.encoder_norm(x)

  def decode_tokens(self, encoded: Array, source: Array, target_in: Array, train: bool = False) -> Array:
    context_mask = (source != self.pad_id)[:, None, None, :]
    x = self.dropout_layer(self.target_embed(target_in), deterministic=not train)
    for block in self.decoder:
      x = block(x, None, encoded, context_mask, train)
    return self.target_embed.attend(self.decoder_norm(x))

  def __call__(self, source: Array, target_in: Array | None = None, train: bool = False) -> Array:
    if target_in is None:
      target_in = jnp.zeros((source.shape[0], 1), jnp.int32)
    return self.decode_tokens(self.encode(source, train), source, target_in, train)
