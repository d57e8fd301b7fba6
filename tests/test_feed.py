"""Feeds: batches cut on the device are the batches tf.data and the window streams give; the
dispatch plan and its size; prefetching; evaluation batches read ahead; steps per dispatch
change no number; the step compiles once."""

import logging
import os

import jax
import numpy as np
import pytest

from conftest import train_in_process
from experiments import checkpoint, data, dispatch, feed
from experiments.config import Config, Runtime
from experiments.datasets import char_text


@pytest.fixture(scope="module")
def mnist1d_builder(tfds_dir):
  return data.builder(Config(data_dir=tfds_dir))


def _taken(f, step, k):
  """The batches a feed gives for steps step .. step + k - 1, on the host."""
  resident = {key: jax.numpy.asarray(v) for key, v in f.resident.items()}
  items = f.items(step, k)
  return [jax.device_get(f.take(resident, {key: v[i] for key, v in items.items()})) for i in range(k)]


@pytest.mark.parametrize("changes", [dict(batch_size=300, seed=3), dict(shuffle=False),
                                     dict(batch_size=128, shuffle_buffer=500, seed=1)])
def test_examples_on_the_device_are_the_tfdata_batches(mnist1d_builder, tfds_dir, changes):
  config = Config(data_dir=tfds_dir, **changes)
  f = feed.make(config, data.Source(mnist1d_builder, None, {}, None, 10))
  assert isinstance(f, feed.Examples) and f.resident["x"].shape == (4000, 40)
  for start, k in ((0, 30), (13, 3), (27, 5)):  # 30 x 300 crosses two epochs; 13 x 300 straddles one
    want = data.train_batches(config, mnist1d_builder, start_step=start)
    for got in _taken(f, start, k):
      expected = next(want)
      np.testing.assert_array_equal(got["x"], expected["x"])
      np.testing.assert_array_equal(got["y"], expected["y"])


def test_the_feed_is_chosen_by_size(mnist1d_builder, tfds_dir):
  source = data.Source(mnist1d_builder, None, {"x": np.zeros((1, 40), np.float32), "y": np.zeros(1, np.int32)}, None, 10)
  assert isinstance(feed.make(Config(data_dir=tfds_dir), source), feed.Examples)
  assert isinstance(feed.make(Config(data_dir=tfds_dir, runtime=Runtime(device_data_mb=0.5)), source), feed.Streamed)  # 0.64 MB
  streamed = feed.make(Config(data_dir=tfds_dir, runtime=Runtime(device_data_mb=0), batch_size=300, seed=3), source)
  assert isinstance(streamed, feed.Streamed) and not streamed.resident
  want = data.train_batches(Config(data_dir=tfds_dir, batch_size=300, seed=3), mnist1d_builder, start_step=4)
  items = streamed.items(4, 2)
  assert items["x"].shape == (2, 300, 40)
  for i in range(2):
    np.testing.assert_array_equal(items["x"][i], next(want)["x"])
  np.testing.assert_array_equal(streamed.items(0, 1)["y"][0], next(
      data.train_batches(Config(data_dir=tfds_dir, batch_size=300, seed=3), mnist1d_builder))["y"])  # a jump back


@pytest.mark.skipif(not os.path.isfile(char_text.DEFAULT_TEXT_PATH), reason="needs the shared Tiny Shakespeare file")
def test_text_windows_on_the_device_are_the_streamed_windows(tfds_dir):
  config = Config(dataset="char_text", data_dir=tfds_dir, eval_split="validation", block_size=64, batch_size=12,
                  model="gpt", objective="lm", seed=2)
  source = data.load(config)
  f = feed.make(config, source)
  assert isinstance(f, feed.Windows) and f.resident["tokens"].shape == (1_003_854,)
  want = data.text_batches(config, source.text, start_step=5)
  for got in _taken(f, 5, 4):
    expected = next(want)
    assert got["x"].dtype == np.int32
    np.testing.assert_array_equal(got["x"], expected["x"])
    np.testing.assert_array_equal(got["y"], expected["y"])
  assert isinstance(feed.make(config.replace(runtime=Runtime(device_data_mb=1)), source), feed.Streamed)  # 4 MB of tokens


def _audio(clip_lengths):
  """An Audio source whose clip c holds 1000 c + t at time t (mu-law ids are taken mod 256)."""
  audio = data.Audio.__new__(data.Audio)
  audio.clips = {"train": [(1000 * c + np.arange(n)) for c, n in enumerate(clip_lengths)]}
  audio._eligible_cache = {}  # pylint: disable=protected-access
  return audio


def test_audio_windows_on_the_device_stay_inside_one_clip():
  lengths = [50, 9, 120, 33, 70]  # the 9-sample clip holds no window of 16 + 1
  audio = _audio(lengths)
  config = Config(dataset="tones", objective="lm", model="wavenet", block_size=16, batch_size=64, seed=4)
  f = feed.Windows(config, audio)
  assert f.resident["tokens"].dtype == np.uint8 and len(f.resident["tokens"]) == 50 + 120 + 33 + 70
  streamed = data.text_batches(config, audio)
  clips = {c: (1000 * c + np.arange(n)).astype(np.uint8) for c, n in enumerate(lengths)}
  for got in _taken(f, 0, 3):
    expected = next(streamed)
    np.testing.assert_array_equal(got["x"], expected["x"])
    window = np.concatenate([got["x"], got["y"][:, -1:]], axis=1)
    for row in window:  # consecutive samples of one clip (other than the short one)
      assert any(any(np.array_equal(row, clip[s:s + 17]) for s in range(len(clip) - 16))
                 for c, clip in clips.items() if c != 1)


def test_plan_never_crosses_a_log_eval_or_checkpoint_step():
  chunks = dispatch.plan(0, 1000, 250, (100, 250, 0))
  assert chunks[:3] == [(0, 100), (100, 100), (200, 50)]
  assert sum(k for _, k in chunks) == 1000 and all(s + k == t for (s, k), (t, _) in zip(chunks, chunks[1:]))
  assert all((s // p) == ((s + k - 1) // p) for s, k in chunks for p in (100, 250))
  assert dispatch.plan(37, 100, 50, (50,)) == [(37, 13), (50, 50)]  # a resumed run: up to the next boundary
  assert dispatch.plan(0, 7, 3, ()) == [(0, 3), (3, 3), (6, 1)]


class _Numbers(feed.Feed):
  def __init__(self, fail_at=None):
    self.fail_at = fail_at

  def items(self, step, k):
    if step == self.fail_at:
      raise RuntimeError(f"no data at {step}")
    return {"x": np.arange(step, step + k)[:, None]}


def test_prefetch_yields_the_planned_items_in_order_and_reraises():
  chunks = dispatch.plan(0, 20, 4, ())
  got = list(dispatch.Prefetch(_Numbers(), chunks, lambda items: items))
  assert [(s, k) for s, k, _ in got] == chunks
  np.testing.assert_array_equal(np.concatenate([i["x"][:, 0] for _, _, i in got]), np.arange(20))
  prefetch = dispatch.Prefetch(_Numbers(fail_at=8), chunks, lambda items: items)
  assert next(prefetch)[0] == 0 and next(prefetch)[0] == 4
  with pytest.raises(RuntimeError, match="no data at 8"):
    next(prefetch)
  prefetch.close()
  early = dispatch.Prefetch(_Numbers(), dispatch.plan(0, 10_000, 1, ()), lambda items: items, depth=2)
  next(early)
  early.close()  # a consumer that stops early (SIGTERM, NaN) stops the thread
  assert not early._thread.is_alive()  # pylint: disable=protected-access


def _counted_batches():
  """3 batches of 160 bytes, and a `put` that records each call in the returned list."""
  puts = []

  def put(batch):
    puts.append(1)
    return batch

  return [{"x": np.zeros((10, 4), np.float32)} for _ in range(3)], put, puts


def test_device_batches_are_kept_when_small():
  batches, put, puts = _counted_batches()
  kept = feed.DeviceBatches(batches, put, limit=1000)
  assert len(list(kept)) == 3 and len(list(kept)) == 3 and len(puts) == 3  # put once
  streamed = feed.DeviceBatches(batches, put, limit=300)
  assert len(list(streamed)) == 3 and len(list(streamed)) == 3 and len(puts) == 9  # put every pass


def test_device_batches_load_reads_ahead_only_what_fits():
  batches, put, puts = _counted_batches()
  kept = feed.DeviceBatches(batches, put, limit=1000)
  assert kept.load() and len(puts) == 3 and len(list(kept)) == 3 and len(puts) == 3  # no second put
  too_big = feed.DeviceBatches(batches, put, limit=300)
  assert not too_big.load() and len(puts) == 4  # stopped at the batch that did not fit
  assert len(list(too_big)) == 3 and len(puts) == 7  # and streams them


def test_dispatch_size_counts_the_products_where_xla_does_not(monkeypatch, tfds_dir):
  from experiments import dispatch, train  # pylint: disable=g-import-not-at-top
  config = Config(data_dir=tfds_dir, model="mlp", model_hparams={"features": (32,)}, batch_size=50, steps=100,
                  log_every=25, eval_every=25, checkpoint_every=0)
  assert train.prepare(config).steps.k == 25  # the CPU: XLA's count, a few MFLOP a step
  monkeypatch.setattr(dispatch, "xla_counts_products", lambda par: False)  # as on a GPU
  monkeypatch.setattr(dispatch.Steps, "matmul_flops_per_step", lambda self, k=1: 1e9)
  assert train.prepare(config).steps.k == 5  # 1e10 FLOPs a dispatch: 10 steps, the largest divisor of 25 below


# 100 x 50 examples: more than the 4,000 of the split, so the run holds them on the device.
RUN = ["--model=mlp", "--mlp.features=32,32", "--mlp.dropout=0.1", "--steps=100", "--batch_size=50",
       "--log_every=25", "--eval_every=25", "--checkpoint_every=0", "--seed=3", "--schedule=warmup_cosine",
       "--warmup_steps=5"]


def _final_params(workdir):
  state = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).restore_raw()
  return jax.tree.leaves(state["params"])


def test_dispatch_size_and_data_placement_change_no_number(tmp_path):
  runs = {"auto": [], "one": ["--runtime.steps_per_dispatch=1"], "three": ["--runtime.steps_per_dispatch=3"],
          "streamed": ["--runtime.device_data_mb=0"]}
  summaries = {name: train_in_process(*RUN, *extra, workdir=tmp_path / name) for name, extra in runs.items()}
  assert summaries["auto"]["steps_per_dispatch"] == 25 and summaries["one"]["steps_per_dispatch"] == 1
  assert summaries["auto"]["feed"] == "Examples" and summaries["streamed"]["feed"] == "Streamed"
  reference = _final_params(tmp_path / "one")
  for name in runs:
    for a, b in zip(reference, _final_params(tmp_path / name)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
    assert summaries[name]["eval/loss"] == pytest.approx(summaries["one"]["eval/loss"], rel=1e-6)


def test_the_train_step_compiles_once(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  with jax.log_compiles(True):
    summary = train_in_process(*RUN, workdir=tmp_path)
  compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(")]
  assert summary["step"] == 100 and summary["steps_per_dispatch"] == 25  # 4 dispatches, 4 evaluations
  assert sum("jit(train_steps)" in m for m in compiled) == 1, compiled
  assert sum("jit(global_batch)" in m for m in compiled) == 1, compiled  # the evaluation step
