"""Pretrained GPT-2 from a Hugging Face folder: its weights as our `gpt`'s parameters, and its tokenizer.

A folder as Hugging Face writes it (`save_pretrained`, or the files of the `gpt2` model repository):
`config.json`, `model.safetensors` and, for the tokenizer, `vocab.json` and `merges.txt`.

    from nets import gpt2
    hparams, params = gpt2.load("gpt2")           # {"num_layers": 12, ...}, our gpt's "params"
    model, params = gpt2.from_pretrained("gpt2")  # nets.create("gpt", **hparams), the same params
    logits = model.apply({"params": params}, tokens)
    tok = gpt2.tokenizer("gpt2")
    tok.decode(tok.encode("Hello world"))

GPT-2 is our `gpt` with tied embeddings, biases, LayerNorm epsilon 1e-5 and the tanh-approximate
GELU (`gelu="tanh"`). Its `Conv1D` weights are stored [in, out], so they are our kernels after a
reshape of the heads: `c_attn` [E, 3E] -> qkv [E, 3, H, D], the attention's `c_proj` [E, E] ->
out [H, D, E]. Weights are read with `safetensors` (the `gpt2` extra: `pip install safetensors`),
imported when a checkpoint is read, so `import nets` does not need it; PyTorch is not needed.

The tokenizer is GPT-2's byte-level BPE, in pure Python: text -> UTF-8 bytes, each byte a
printable character (`byte_chars`), the pre-tokenizer's pieces (contractions, letters, digits,
other symbols, whitespace) each merged pair by pair, lowest merge rank first, then looked up in
`vocab.json`. GPT-2's pre-tokenizer uses the `regex` package's `\\p{L}` and `\\p{N}`; here the same
classes are listed from Python's `unicodedata` for the standard `re` (identical up to the Unicode
versions of the two), and `\\s` is Unicode's White_Space property, as in `regex`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import unicodedata
from typing import Any, Iterable, Sequence

import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
MERGES = "merges.txt"

# Hugging Face's activation names -> our gpt's `gelu`.
_GELUS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact",
          "gelu_python": "exact"}
_LN_EPS = 1e-5  # nets.transformer's
# The attention's causal-mask buffers, which hold no parameter (the tied lm_head is skipped too).
_IGNORED = re.compile(r"(h\.\d+\.attn\.(bias|masked_bias))$")


def _file(folder: str | os.PathLike, name: str) -> str:
  folder = os.path.expanduser(os.fspath(folder))
  if not os.path.isdir(folder):
    raise ValueError(f"GPT-2: no folder {folder!r} (a Hugging Face GPT-2 folder: {CONFIG}, {WEIGHTS}, {VOCAB}, "
                     f"{MERGES})")
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise ValueError(f"GPT-2: no {name} in {folder!r} (a Hugging Face GPT-2 folder: {CONFIG}, {WEIGHTS}, {VOCAB}, "
                     f"{MERGES}; pytorch_model.bin alone is not read)")
  return path


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"GPT-2: {path}: not readable JSON ({type(e).__name__}: {e})") from None


def hparams_from_config(config: dict[str, Any], where: str = CONFIG) -> dict[str, Any]:
  """Our gpt's hyperparameters from a Hugging Face GPT2Config's dict; a ValueError (one line)
  for what our gpt cannot compute."""
  missing = [k for k in ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size") if k not in config]
  if missing:
    raise ValueError(f"GPT-2: {where} has no {', '.join(missing)}")
  for key in ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size"):
    if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
      raise ValueError(f"GPT-2: {where} has {key}={config[key]!r}; it must be a positive integer")
  embed, heads = config["n_embd"], config["n_head"]
  if embed % heads:
    raise ValueError(f"GPT-2: {where} has n_embd={embed}, not a multiple of n_head={heads}")
  activation = config.get("activation_function", "gelu_new")
  if activation not in _GELUS:
    raise ValueError(f"GPT-2: {where} has activation_function={activation!r}; our gpt computes "
                     f"{', '.join(sorted(_GELUS))}")
  eps = config.get("layer_norm_epsilon", _LN_EPS)
  if not math.isclose(eps, _LN_EPS, rel_tol=1e-6):
    raise ValueError(f"GPT-2: {where} has layer_norm_epsilon={eps}; our gpt's LayerNorm epsilon is {_LN_EPS}")
  inner = config.get("n_inner") or 4 * embed
  if inner % embed:
    raise ValueError(f"GPT-2: {where} has n_inner={inner}, not a multiple of n_embd={embed} (our gpt's MLP is "
                     "mlp_ratio * embed_dim wide)")
  for key, ours in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    if config.get(key, ours) != ours:
      raise ValueError(f"GPT-2: {where} has {key}={config[key]}; our gpt computes only {key}={ours}")
  return {"vocab_size": config["vocab_size"], "max_len": config["n_positions"], "num_layers": config["n_layer"],
          "num_heads": heads, "embed_dim": embed, "mlp_ratio": inner // embed, "gelu": _GELUS[activation],
          "tie_embeddings": bool(config.get("tie_word_embeddings", True))}


def _mapping(h: dict[str, Any]) -> list[tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...] | None]]:
  """(Hugging Face name, our parameter's path, its shape in the file, our shape if reshaped)."""
  e, v, p, heads = h["embed_dim"], h["vocab_size"], h["max_len"], h["num_heads"]
  d, f = e // heads, h["mlp_ratio"] * e
  norm = lambda hf, ours: [(f"{hf}.weight", (*ours, "scale"), (e,), None), (f"{hf}.bias", (*ours, "bias"), (e,), None)]
  rows = [("wte.weight", ("embed", "tokens", "embedding"), (v, e), None),
          ("wpe.weight", ("embed", "positions", "embedding"), (p, e), None)]
  for i in range(h["num_layers"]):
    b = f"block{i}"
    rows += norm(f"h.{i}.ln_1", (b, "ln_attention")) + [
        (f"h.{i}.attn.c_attn.weight", (b, "attention", "qkv", "kernel"), (e, 3 * e), (e, 3, heads, d)),
        (f"h.{i}.attn.c_attn.bias", (b, "attention", "qkv", "bias"), (3 * e,), (3, heads, d)),
        (f"h.{i}.attn.c_proj.weight", (b, "attention", "out", "kernel"), (e, e), (heads, d, e)),
        (f"h.{i}.attn.c_proj.bias", (b, "attention", "out", "bias"), (e,), None),
    ] + norm(f"h.{i}.ln_2", (b, "ln_mlp")) + [
        (f"h.{i}.mlp.c_fc.weight", (b, "mlp", "fc", "kernel"), (e, f), None),
        (f"h.{i}.mlp.c_fc.bias", (b, "mlp", "fc", "bias"), (f,), None),
        (f"h.{i}.mlp.c_proj.weight", (b, "mlp", "proj", "kernel"), (f, e), None),
        (f"h.{i}.mlp.c_proj.bias", (b, "mlp", "proj", "bias"), (e,), None),
    ]
  rows += norm("ln_f", ("ln_final",))
  if not h["tie_embeddings"]:  # torch's Linear [out, in]: transposed below
    rows.append(("lm_head.weight", ("head", "kernel"), (v, e), None))
  return rows


def _open(path: str):
  try:
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f"GPT-2: reading {path} needs the safetensors package (pip install safetensors, or the "
                     "project's gpt2 extra)") from None
  try:
    return safe_open(path, framework="np")
  except Exception as e:  # pylint: disable=broad-except  (safetensors' own error type)
    raise ValueError(f"GPT-2: {path}: not a safetensors file ({' '.join(str(e).split())})") from None


def load(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """(our gpt's hyperparameters, its "params" collection as nested dicts of float32 numpy
  arrays) from a Hugging Face GPT-2 folder. The parameters' tree and shapes are checked
  against the model's own (`check`); any missing, unexpected or misshapen tensor is a
  ValueError naming it."""
  config_path = _file(folder, CONFIG)
  hparams = hparams_from_config(_read_json(config_path), config_path)
  path = _file(folder, WEIGHTS)
  rows = _mapping(hparams)
  params: dict[str, Any] = {}
  with _open(path) as f:
    names = list(f.keys())
    prefix = "transformer." if any(n.startswith("transformer.") for n in names) else ""
    wanted = {prefix + hf if hf != "lm_head.weight" else hf for hf, *_ in rows}
    unexpected = sorted(n for n in names if n not in wanted and not _IGNORED.search(n)
                        and not (n == "lm_head.weight" and hparams["tie_embeddings"]))
    if unexpected:
      raise ValueError(f"GPT-2: {path} has tensor(s) our gpt has no place for: {', '.join(unexpected[:5])}"
                       + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    missing = [n for n in sorted(wanted) if n not in names]
    if missing:
      raise ValueError(f"GPT-2: {path} lacks tensor(s) {', '.join(missing[:5])}"
                       + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for hf, ours, shape, reshape in rows:
      name = hf if hf == "lm_head.weight" else prefix + hf
      stored = tuple(f.get_slice(name).get_shape())
      if stored != shape:
        raise ValueError(f"GPT-2: {path}: {name} has shape {stored}; {CONFIG}'s sizes make it {shape}")
      try:
        array = np.asarray(f.get_tensor(name), np.float32)
      except Exception as e:  # pylint: disable=broad-except  (e.g. bfloat16, which numpy cannot hold)
        raise ValueError(f"GPT-2: {path}: {name} is not readable as numpy ({' '.join(str(e).split())})") from None
      if hf == "lm_head.weight":
        array = array.T
      node = params
      for key in ours[:-1]:
        node = node.setdefault(key, {})
      node[ours[-1]] = array.reshape(reshape) if reshape else array
  check(_model(hparams), params)
  return hparams, params


def _model(hparams: dict[str, Any]):
  from nets import registry  # pylint: disable=import-outside-toplevel
  return registry.create("gpt", **hparams)


def check(model, params: dict[str, Any]) -> None:
  """A ValueError naming the first parameter whose path or shape differs from `model`'s own
  (its initialisation's, computed abstractly: no memory, no compute)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  want = {"/".join(str(k.key) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  have = {"/".join(str(k.key) for k in path): np.shape(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  for name in sorted(set(want) | set(have)):
    if name not in have:
      raise ValueError(f"GPT-2: the parameters lack {name} {tuple(want[name])} of the model")
    if name not in want:
      raise ValueError(f"GPT-2: the parameters hold {name} {have[name]}, which the model has not")
    if tuple(want[name]) != tuple(have[name]):
      raise ValueError(f"GPT-2: parameter {name} has shape {tuple(have[name])}; the model's is {tuple(want[name])}")


def from_pretrained(folder: str | os.PathLike, **overrides: Any):
  """(our gpt with the folder's hyperparameters, its parameters). `overrides` set other
  hyperparameters of the model (dropout, attention_kernel, ...); one that changes a
  parameter's shape is a ValueError naming it."""
  hparams, params = load(folder)
  model = _model({**hparams, **overrides})
  if overrides:
    check(model, params)
  return model, params


# --- The tokenizer -------------------------------------------------------------------------


@functools.cache
def byte_chars() -> tuple[str, ...]:
  """Byte b -> a printable character: the printable Latin-1 bytes are themselves, the others
  (control characters, space, ...) the characters from U+0100 on, in byte order."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return tuple(chars[b] for b in range(256))


# Unicode's White_Space property (what `regex`'s \s matches; `re`'s \s adds U+001C..U+001F).
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _ranges(codes: Iterable[int]) -> str:
  """A character class's body for sorted code points, as ranges."""
  out, codes = [], list(codes)
  i = 0
  while i < len(codes):
    j = i
    while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
      j += 1
    out.append(f"\\U{codes[i]:08x}" + (f"-\\U{codes[j]:08x}" if j > i else ""))
    i = j + 1
  return "".join(out)


@functools.cache
def pretokenizer() -> re.Pattern:
  """GPT-2's pre-tokenizer, `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`,
  for `re`: the letter and number classes listed from `unicodedata` (built once, ~0.3 s)."""
  letters, numbers = [], []
  for code in range(sys.maxunicode + 1):
    kind = unicodedata.category(chr(code))[0]
    if kind == "L":
      letters.append(code)
    elif kind == "N":
      numbers.append(code)
  l, n, s = _ranges(letters), _ranges(numbers), _WHITE_SPACE
  return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{l}]+| ?[{n}]+| ?[^{s}{l}{n}]+|[{s}]+(?![^{s}])|[{s}]+")


class Tokenizer:
  """GPT-2's byte-level BPE: `encode(text)` -> token ids, `decode(ids)` -> text (bytes that
  are not UTF-8, e.g. a character cut by a window's edge, decode as U+FFFD). `vocab`: token
  string -> id; `merges`: the symbol pairs, highest priority first."""

  def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
    self.vocab = dict(vocab)
    self.tokens = {i: t for t, i in self.vocab.items()}
    self.ranks = {pair: rank for rank, pair in enumerate(merges)}
    self.size = max(self.vocab.values()) + 1 if self.vocab else 0
    self._byte = byte_chars()
    self._unbyte = {c: b for b, c in enumerate(self._byte)}
    self._cache: dict[str, tuple[int, ...]] = {}

  def bpe(self, piece: str) -> list[str]:
    """The symbols of one pre-tokenized piece (in byte characters), merged by rank."""
    word = list(piece)
    while len(word) > 1:
      rank, i = min((self.ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(word, word[1:])))
      if rank == math.inf:
        break
      first, second = word[i], word[i + 1]
      merged, j = [], 0
      while j < len(word):  # every occurrence of the pair, left to right
        if j + 1 < len(word) and word[j] == first and word[j + 1] == second:
          merged.append(first + second)
          j += 2
        else:
          merged.append(word[j])
          j += 1
      word = merged
    return word

  def _piece_ids(self, piece: str) -> tuple[int, ...]:
    ids = self._cache.get(piece)
    if ids is None:
      symbols = self.bpe("".join(self._byte[b] for b in piece.encode("utf-8")))
      try:
        ids = tuple(self.vocab[s] for s in symbols)
      except KeyError as e:
        raise ValueError(f"GPT-2 tokenizer: symbol {e.args[0]!r} (of {piece!r}) is not in the vocabulary") from None
      self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    return [i for piece in pretokenizer().findall(text) for i in self._piece_ids(piece)]

  def decode(self, ids: Iterable[int]) -> str:
    try:
      chars = "".join(self.tokens[int(i)] for i in ids)
    except KeyError as e:
      raise ValueError(f"GPT-2 tokenizer: no token has id {e.args[0]}") from None
    return bytes(self._unbyte[c] for c in chars).decode("utf-8", errors="replace")


def tokenizer(folder: str | os.PathLike) -> Tokenizer:
  """The tokenizer of a Hugging Face GPT-2 folder (vocab.json, merges.txt)."""
  vocab_path, merges_path = _file(folder, VOCAB), _file(folder, MERGES)
  vocab = _read_json(vocab_path)
  if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
    raise ValueError(f"GPT-2: {vocab_path} is not a JSON object of token -> id")
  merges = []
  with open(merges_path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line or (number == 1 and line.startswith("#version")):
        continue
      pair = line.split(" ")
      if len(pair) != 2:
        raise ValueError(f"GPT-2: {merges_path}:{number}: {line!r} is not two symbols separated by a space")
      merges.append((pair[0], pair[1]))
  return Tokenizer(vocab, merges)
