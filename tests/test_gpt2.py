"""Pretrained GPT-2 (nets.gpt2): a checkpoint in Hugging Face's layout loads into our gpt and
computes GPT-2's logits (checked against a numpy GPT-2 written here from the paper's
definition); GPT-2's BPE tokenizer; --tokenizer=gpt2:FOLDER on a text dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FLAGS_DIR, ROOT, train_in_process
import nets
from nets import gpt2
from experiments import config as config_lib

VOCAB, LAYERS, HEADS, WIDTH, POSITIONS = 50, 2, 2, 16, 32


def _config(**changes) -> dict:
  """config.json as Hugging Face writes a GPT2LMHeadModel's, at the tiny sizes."""
  return {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
          "bos_token_id": VOCAB - 1, "embd_pdrop": 0.1, "eos_token_id": VOCAB - 1, "initializer_range": 0.02,
          "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": POSITIONS, "n_embd": WIDTH, "n_head": HEADS,
          "n_inner": None, "n_layer": LAYERS, "n_positions": POSITIONS, "reorder_and_upcast_attn": False,
          "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
          "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
          "summary_type": "cls_index", "summary_use_proj": True, "transformers_version": "4.46.0",
          "use_cache": True, "vocab_size": VOCAB, **changes}


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
  """Random GPT-2 weights by Hugging Face's names (no prefix), Conv1D weights [in, out]; large
  enough that every part of the network moves the logits."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape, std=0.3: rng.normal(0, std, shape)
  e = WIDTH
  w = {"wte.weight": normal(VOCAB, e, std=0.5), "wpe.weight": normal(POSITIONS, e, std=0.5),
       "ln_f.weight": 1 + normal(e, std=0.2), "ln_f.bias": normal(e, std=0.2)}
  for i in range(LAYERS):
    for ln in ("ln_1", "ln_2"):
      w[f"h.{i}.{ln}.weight"], w[f"h.{i}.{ln}.bias"] = 1 + normal(e, std=0.2), normal(e, std=0.2)
    w[f"h.{i}.attn.c_attn.weight"], w[f"h.{i}.attn.c_attn.bias"] = normal(e, 3 * e), normal(3 * e, std=0.2)
    w[f"h.{i}.attn.c_proj.weight"], w[f"h.{i}.attn.c_proj.bias"] = normal(e, e), normal(e, std=0.2)
    w[f"h.{i}.mlp.c_fc.weight"], w[f"h.{i}.mlp.c_fc.bias"] = normal(e, 4 * e), normal(4 * e, std=0.2)
    w[f"h.{i}.mlp.c_proj.weight"], w[f"h.{i}.mlp.c_proj.bias"] = normal(4 * e, e, std=0.15), normal(e, std=0.2)
  return w


def _write(folder, weights: dict[str, np.ndarray], config: dict | None = None, prefix: str = "transformer.",
           buffers: bool = True):
  """A checkpoint folder as save_pretrained writes it: config.json and model.safetensors
  (float32), with the attention's causal-mask buffers."""
  save_file = pytest.importorskip("safetensors.numpy").save_file
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config or _config(), f)
  tensors = {prefix + k: v.astype(np.float32) for k, v in weights.items()}
  if buffers:
    for i in range(LAYERS):
      tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((POSITIONS, POSITIONS), bool))[None, None]
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  return folder


def _numpy_gpt2(w: dict[str, np.ndarray], tokens: np.ndarray, gelu: str = "tanh") -> np.ndarray:
  """GPT-2's logits [B, T, V] in float64, from the paper's definition (Radford et al. 2019):
  token + position embeddings; per layer x += attn(LN1 x), x += MLP(LN2 x) with causal
  softmax attention over heads and the MLP's GELU; final LayerNorm; logits against the
  token embeddings (tied)."""
  w = {k: v.astype(np.float64) for k, v in w.items()}

  def norm(x, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]

  def act(x):
    if gelu == "tanh":
      return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    from scipy.special import erf  # pylint: disable=g-import-not-at-top
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))

  batch, length = tokens.shape
  d = WIDTH // HEADS
  x = w["wte.weight"][tokens] + w["wpe.weight"][:length]
  future = np.triu(np.ones((length, length), bool), k=1)
  for i in range(LAYERS):
    h = norm(x, f"h.{i}.ln_1") @ w[f"h.{i}.attn.c_attn.weight"] + w[f"h.{i}.attn.c_attn.bias"]
    q, k, v = (a.reshape(batch, length, HEADS, d).transpose(0, 2, 1, 3) for a in np.split(h, 3, axis=-1))
    scores = np.where(future, -np.inf, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d))
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    heads = (p @ v).transpose(0, 2, 1, 3).reshape(batch, length, WIDTH)
    x = x + heads @ w[f"h.{i}.attn.c_proj.weight"] + w[f"h.{i}.attn.c_proj.bias"]
    h = act(norm(x, f"h.{i}.ln_2") @ w[f"h.{i}.mlp.c_fc.weight"] + w[f"h.{i}.mlp.c_fc.bias"])
    x = x + h @ w[f"h.{i}.mlp.c_proj.weight"] + w[f"h.{i}.mlp.c_proj.bias"]
  return norm(x, "ln_f") @ w["wte.weight"].T


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_loaded_checkpoint_computes_gpt2s_logits(tmp_path, prefix):
  weights = _weights()
  folder = _write(tmp_path / "gpt2", weights, prefix=prefix)
  hparams, params = gpt2.load(folder)
  assert hparams == {"vocab_size": VOCAB, "max_len": POSITIONS, "num_layers": LAYERS, "num_heads": HEADS,
                     "embed_dim": WIDTH, "mlp_ratio": 4, "gelu": "tanh", "tie_embeddings": True}
  assert params["block1"]["attention"]["qkv"]["kernel"].shape == (WIDTH, 3, HEADS, WIDTH // HEADS)
  tokens = np.random.default_rng(1).integers(0, VOCAB, (2, POSITIONS))
  model = nets.create("gpt", **hparams)
  logits = np.asarray(model.apply({"params": params}, tokens), np.float64)
  want = _numpy_gpt2(weights, tokens)
  assert np.abs(want).max() > 1  # logits of size: the comparison below is not of near-zeros
  assert np.abs(logits - want).max() < 1e-5
  # The GELU matters at this size: the exact one is 1e-3 away (so the test tells them apart).
  exact = np.asarray(nets.create("gpt", **{**hparams, "gelu": "exact"}).apply({"params": params}, tokens))
  assert np.abs(exact - want).max() > 1e-3
  assert np.abs(exact - _numpy_gpt2(weights, tokens, gelu="exact")).max() < 1e-5


def test_from_pretrained_builds_the_model_and_checks_overrides(tmp_path):
  folder = _write(tmp_path / "gpt2", _weights())
  model, params = gpt2.from_pretrained(folder, dropout=0.1)
  assert (model.num_layers, model.embed_dim, model.gelu, model.dropout) == (LAYERS, WIDTH, "tanh", 0.1)
  tokens = np.arange(8)[None] % VOCAB
  assert model.apply({"params": params}, tokens).shape == (1, 8, VOCAB)
  with pytest.raises(ValueError, match=r"embed/positions/embedding has shape \(32, 16\); the model's is \(64, 16\)"):
    gpt2.from_pretrained(folder, max_len=64)


def test_untied_head_is_read_transposed(tmp_path):
  weights = _weights()
  head = np.random.default_rng(2).normal(0, 0.5, (VOCAB, WIDTH))
  folder = _write(tmp_path / "gpt2", weights, _config(tie_word_embeddings=False))
  save = {"transformer." + k: v.astype(np.float32) for k, v in weights.items()}
  pytest.importorskip("safetensors.numpy").save_file({**save, "lm_head.weight": head.astype(np.float32)},
                                                     os.path.join(folder, "model.safetensors"))
  hparams, params = gpt2.load(folder)
  assert not hparams["tie_embeddings"]
  np.testing.assert_array_equal(params["head"]["kernel"], head.astype(np.float32).T)


def _one_line(e: pytest.ExceptionInfo) -> str:
  text = str(e.value)
  assert "\n" not in text
  return text


def test_missing_files_are_one_line(tmp_path):
  with pytest.raises(ValueError, match="no folder") as e:
    gpt2.load(tmp_path / "nowhere")
  assert str(tmp_path / "nowhere") in _one_line(e)
  folder = tmp_path / "gpt2"
  folder.mkdir()
  with pytest.raises(ValueError, match="no config.json in") as e:
    gpt2.load(folder)
  _one_line(e)
  (folder / "config.json").write_text(json.dumps(_config()))
  with pytest.raises(ValueError, match="no model.safetensors in") as e:
    gpt2.load(folder)
  assert str(folder) in _one_line(e)
  (folder / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a safetensors file") as e:
    gpt2.load(folder)
  _one_line(e)


@pytest.mark.parametrize("change,message", [
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
    ({"n_inner": 40}, "n_inner=40"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"n_head": 3}, "n_embd=16, not a multiple of n_head=3"),
    ({"n_layer": "2"}, "n_layer='2'; it must be a positive integer"),
])
def test_a_config_we_cannot_compute_is_one_line(tmp_path, change, message):
  folder = _write(tmp_path / "gpt2", _weights(), _config(**change))
  with pytest.raises(ValueError, match=message) as e:
    gpt2.load(folder)
  assert "config.json" in _one_line(e)


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
  weights = _weights()
  del weights["h.1.mlp.c_fc.bias"]
  with pytest.raises(ValueError, match=r"lacks tensor\(s\) transformer.h.1.mlp.c_fc.bias$"):
    gpt2.load(_write(tmp_path / "a", weights))
  weights = {**_weights(), "h.0.crossattention.c_attn.weight": np.zeros((WIDTH, 2 * WIDTH))}
  with pytest.raises(ValueError, match="no place for: transformer.h.0.crossattention.c_attn.weight"):
    gpt2.load(_write(tmp_path / "b", weights))
  weights = {**_weights(), "h.0.attn.c_attn.weight": np.zeros((3 * WIDTH, WIDTH))}  # torch Linear's [out, in]
  with pytest.raises(ValueError, match=r"transformer.h.0.attn.c_attn.weight has shape \(48, 16\); config.json's "
                     r"sizes make it \(16, 48\)"):
    gpt2.load(_write(tmp_path / "c", weights))
  with pytest.raises(ValueError, match=r"lack block0/mlp/fc/bias \(64,\)"):  # the tree check
    params = gpt2.load(_write(tmp_path / "d", _weights()))[1]
    del params["block0"]["mlp"]["fc"]["bias"]
    gpt2.check(nets.create("gpt", **gpt2.load(tmp_path / "d")[0]), params)


def test_nets_imports_without_safetensors(tmp_path):
  """`import nets` never needs safetensors; reading a checkpoint without it says what to install."""
  folder = _write(tmp_path / "gpt2", _weights())
  code = ("import sys; sys.modules['safetensors'] = None\n"  # as if not installed
          "import nets, nets.gpt2\n"
          f"try:\n  nets.gpt2.load({str(folder)!r})\n"
          "except ValueError as e:\n  print(e)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert "needs the safetensors package (pip install safetensors" in proc.stdout


# --- The tokenizer ---------------------------------------------------------------------------

# A tiny byte-level BPE: the symbols of "hello world!" and "é" (its UTF-8 bytes C3 A9 are the
# byte characters Ã ©), with merges whose ranks decide the order (Ġ is the space byte's character).
TOKENS = ["h", "e", "l", "o", "Ġ", "w", "r", "d", "ll", "he", "hell", "Ġh", "hello", "or", "Ġw", "Ġwor", "!", "Ã",
          "©", "<|endoftext|>"]
MERGES = ["l l", "h e", "he ll", "Ġ h", "hell o", "o r", "Ġ w", "Ġw or"]


def _tokenizer_folder(folder, tokens=TOKENS, merges=MERGES):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return folder


def test_tokenizer_encodes_by_merge_rank_and_round_trips(tmp_path):
  tok = gpt2.tokenizer(_tokenizer_folder(tmp_path / "tok"))
  assert tok.size == len(TOKENS)
  # "hello": l l -> he -> hell -> hello. " hello": (l, l) first, then (h, e) ranks above
  # (Ġ, h), so Ġh never forms: Ġ hello. " world": (o, r) -> Ġw -> Ġwor, then l, d. "é": two bytes.
  ids = tok.encode("hello hello world!é")
  assert ids == [12, 4, 12, 15, 2, 7, 16, 17, 18]
  assert [TOKENS[i] for i in ids] == ["hello", "Ġ", "hello", "Ġwor", "l", "d", "!", "Ã", "©"]
  assert tok.decode(ids) == "hello hello world!é"
  assert tok.decode([17]) == "\ufffd"  # half of a character
  with pytest.raises(ValueError, match="symbol 'x'"):
    tok.encode("ox")
  with pytest.raises(ValueError, match="no token has id 99"):
    tok.decode([99])


def test_pretokenizer_splits_as_gpt2s():
  pieces = gpt2.pretokenizer().findall("Hello world!!  I've 42 cats,\n\n  ДА 3½x_y")
  assert pieces == ["Hello", " world", "!!", " ", " I", "'ve", " 42", " cats", ",", "\n\n ", " ДА", " 3½", "x",
                    "_", "y"]


def test_every_byte_has_a_character():
  chars = gpt2.byte_chars()
  assert len(set(chars)) == 256 and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ" and chars[ord("A")] == "A"


def _byte_level_folder(folder):
  """Every byte's character (ids 0..255) and a few merges: any text encodes."""
  return _tokenizer_folder(folder, list(gpt2.byte_chars()) + ["th", "Ġth", "Ġthe", "<|endoftext|>"],
                           ["t h", "Ġ th", "Ġth e"])


def test_text_dataset_with_gpt2_tokenizer_trains_and_samples(tmp_path):
  from experiments import data, sample  # pylint: disable=g-import-not-at-top
  folder = _byte_level_folder(tmp_path / "tok")
  text = tmp_path / "input.txt"
  text.write_text("the theme of the thing: " * 40 + "é\n", encoding="utf-8")
  args = ["--dataset=char_text", f"--text_path={text}",
          f"--tokenizer=gpt2:{folder}", "--model=gpt", "--objective=lm", "--gpt.num_layers=1",
          "--gpt.num_heads=2", "--gpt.embed_dim=16", "--block_size=16", "--batch_size=4", "--eval_batch_size=4",
          "--eval_batches=1", "--eval_split=validation", "--sample.tokens=0", "--steps=2"]
  summary = train_in_process(*args, workdir=str(tmp_path / "run"))
  assert summary["step"] == 2
  config = config_lib.from_workdir(tmp_path / "run")
  assert config.tokenizer == f"gpt2:{folder}"
  source = data.load(config)
  assert source.tokenizer.size == 260
  tokens = source.text.tokens["train"]
  assert tokens[:5].tolist() == [256, ord("e"), 258, ord("m"), ord("e")]  # "the" -> th e; " theme" -> Ġthe m e
  assert source.tokenizer.decode(tokens.tolist()) + source.tokenizer.decode(source.text.tokens["validation"].tolist()) \
      == text.read_text(encoding="utf-8")
  out = sample.generate(str(tmp_path / "run"), " the", 6, 0.0, 0, 0)
  assert out.startswith(" the") and len(out) >= len(" the")


def _parse(*args: str) -> config_lib.Config:
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["prog", *args])
  return config_lib.from_flags(values)


FINETUNE = os.path.join(FLAGS_DIR, "shakespeare_gpt2_finetune.flags")


def test_finetune_flag_file_needs_the_folder_and_composes_with_one(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)  # the file names ./gpt2 and includes shakespeare_char.flags from the root
  if not os.path.isdir(os.path.join(ROOT, "gpt2")):
    with pytest.raises(config_lib.ConfigError, match=r"^--tokenizer=gpt2:gpt2: no gpt2/vocab.json") as e:
      _parse(f"--flagfile={FINETUNE}")
    _one_line(e)
  config = _parse(f"--flagfile={FINETUNE}", f"--tokenizer=gpt2:{_byte_level_folder(tmp_path / 'gpt2')}")
  assert config.model == "gpt" and config.dataset == "char_text" and config.block_size == 256
  assert config.model_hparams == {"num_layers": 12, "num_heads": 12, "embed_dim": 768, "max_len": 1024,
                                  "vocab_size": 50257, "gelu": "tanh", "dropout": 0.1}


@pytest.mark.parametrize("value,message", [
    ("bpe", "--tokenizer='bpe' is not char or gpt2:FOLDER"),
    ("gpt2:", "--tokenizer='gpt2:' is not char or gpt2:FOLDER"),
    ("gpt2:/no/such/folder", "--tokenizer=gpt2:/no/such/folder: no /no/such/folder/vocab.json"),
])
def test_bad_tokenizer_flag_is_one_line(value, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.Config(dataset="char_text", tokenizer=value)
  assert _one_line(e).startswith(message)


def test_gpt2_tokenizer_on_a_dataset_that_is_not_text(tmp_path):
  from experiments import data  # pylint: disable=g-import-not-at-top
  config = config_lib.Config(dataset="mnist1d", tokenizer=f"gpt2:{_byte_level_folder(tmp_path / 'tok')}")
  with pytest.raises(config_lib.ConfigError, match="tokenises text datasets; --dataset=mnist1d is not text"):
    data.load(config)


def test_init_from_a_gpt2_folder_fine_tunes_its_weights(tmp_path):
  """--init_from=FOLDER starts a run from the checkpoint's weights (learning rate 0: one step
  leaves them as loaded); a run whose model differs from the checkpoint's is one line."""
  from experiments import checkpoint  # pylint: disable=g-import-not-at-top
  folder = _byte_level_folder(tmp_path / "gpt2")  # 260 tokens
  weights = _weights()
  weights["wte.weight"] = np.random.default_rng(5).normal(0, 0.5, (260, WIDTH))
  _write(folder, weights, _config(vocab_size=260))
  text = tmp_path / "input.txt"
  text.write_text("the theme of the thing: " * 40, encoding="utf-8")
  args = ["--dataset=char_text", f"--text_path={text}", f"--tokenizer=gpt2:{folder}", "--model=gpt",
          "--objective=lm", f"--gpt.num_layers={LAYERS}", f"--gpt.num_heads={HEADS}", f"--gpt.embed_dim={WIDTH}",
          f"--gpt.max_len={POSITIONS}", "--gpt.gelu=tanh", "--block_size=16", "--batch_size=4",
          "--eval_batch_size=4", "--eval_batches=1", "--eval_split=validation", "--sample.tokens=0", "--steps=1",
          f"--init_from={folder}"]
  train_in_process(*args, "--learning_rate=0", workdir=str(tmp_path / "run"))
  saved = checkpoint.Checkpoints(tmp_path / "run" / "checkpoints").restore_raw()["params"]
  _, loaded = gpt2.load(folder)
  np.testing.assert_array_equal(saved["embed"]["tokens"]["embedding"], loaded["embed"]["tokens"]["embedding"])
  np.testing.assert_array_equal(saved["block1"]["mlp"]["fc"]["kernel"], loaded["block1"]["mlp"]["fc"]["kernel"])
  with pytest.raises(config_lib.ConfigError) as e:
    train_in_process(*[a for a in args if a != "--gpt.gelu=tanh"], workdir=str(tmp_path / "other"))
  assert _one_line(e) == f"--init_from={folder}: the checkpoint's gelu is tanh, the run's --gpt.gelu exact"
