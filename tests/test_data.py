"""The MNIST-1D builder, the input pipeline, and the TFDS catalog path with mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import experiments.datasets  # noqa: F401
from experiments import data
from experiments.config import Config, ConfigError


@pytest.fixture(scope="module")
def mnist1d_builder(tfds_dir):
  return data.builder(Config(data_dir=tfds_dir))


def test_mnist1d_builder_is_the_published_split(mnist1d_builder):
  from mnist1d.data import get_dataset_args, make_dataset
  ref = make_dataset(get_dataset_args())
  for split, xk, yk in (("train", "x", "y"), ("test", "x_test", "y_test")):
    x, y = tfds.as_numpy(mnist1d_builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    assert x.shape == ref[xk].shape and x.dtype == np.float32
    np.testing.assert_array_equal(x, ref[xk].astype(np.float32))  # same examples, same order
    np.testing.assert_array_equal(y, ref[yk])
  assert mnist1d_builder.info.splits["train"].num_examples == 4000
  assert mnist1d_builder.info.splits["test"].num_examples == 1000
  assert data.num_classes(mnist1d_builder) == 10


def test_tfds_load_finds_our_builder(mnist1d_builder, tfds_dir):  # prepared by the fixture
  ds = tfds.load("mnist1d", split="test", data_dir=tfds_dir, as_supervised=True)
  assert sum(1 for _ in ds) == 1000


def test_mnist1d_larger_configs_add_generated_chunks_after_the_published_set(tfds_dir, monkeypatch, tmp_path):
  from mnist1d.data import get_dataset_args, make_dataset
  from experiments.datasets import mnist1d
  monkeypatch.setattr(mnist1d, "CHUNK", 20)  # the real configs add chunks of 12,000
  monkeypatch.setitem(mnist1d.SIZES, "tiny", (4040, 20))
  b = mnist1d.Mnist1d(config=tfds.core.BuilderConfig(name="tiny"), data_dir=str(tmp_path))
  b.download_and_prepare()
  x, y = tfds.as_numpy(b.as_dataset(split="train", batch_size=-1, as_supervised=True))
  ref = make_dataset(get_dataset_args())
  np.testing.assert_array_equal(x[:4000], ref["x"].astype(np.float32))  # the published examples first
  np.testing.assert_array_equal(y[:4000], ref["y"])
  for i, seed in enumerate((43, 44)):  # then one make_dataset call per seed
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 20, 1.0, seed
    chunk = make_dataset(args)
    np.testing.assert_array_equal(x[4000 + 20 * i:4020 + 20 * i], chunk["x"].astype(np.float32))
  x_test, _ = tfds.as_numpy(b.as_dataset(split="test", batch_size=-1, as_supervised=True))
  assert x_test.shape == (20, 40) and not np.array_equal(x_test, ref["x_test"][:20])
  assert [c.name for c in mnist1d.Mnist1d.BUILDER_CONFIGS] == ["published", "train_16k", "train_64k",
                                                                 "train_256k", "test_12k"]


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_batches_are_seeded_and_resume_at_any_step(mnist1d_builder, tfds_dir):
  config = Config(data_dir=tfds_dir, batch_size=300, seed=3)
  first = _take(data.train_batches(config, mnist1d_builder), 30)  # crosses two epoch boundaries
  again = _take(data.train_batches(config, mnist1d_builder), 30)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["x"], b["x"])
  for start in (1, 13, 27):  # 13 * 300 = 3900: the batch straddles the end of epoch 0
    resumed = _take(data.train_batches(config, mnist1d_builder, start_step=start), 3)
    for a, b in zip(first[start:start + 3], resumed):
      np.testing.assert_array_equal(a["x"], b["x"])
      np.testing.assert_array_equal(a["y"], b["y"])
  other_seed = next(data.train_batches(config.replace(seed=4), mnist1d_builder))
  assert not np.array_equal(other_seed["y"], first[0]["y"])
  # Each epoch is a permutation of the training set.
  epoch = np.concatenate([b["y"] for b in _take(data.train_batches(config.replace(batch_size=100), mnist1d_builder), 40)])
  assert np.array_equal(np.bincount(epoch, minlength=10), np.bincount(
      tfds.as_numpy(mnist1d_builder.as_dataset(split="train", batch_size=-1, as_supervised=True))[1], minlength=10))


def test_unshuffled_batches_are_the_paper_order(mnist1d_builder, tfds_dir):
  from mnist1d.data import get_dataset_args, make_dataset
  ref = make_dataset(get_dataset_args())
  batches = _take(data.train_batches(Config(data_dir=tfds_dir, shuffle=False), mnist1d_builder), 41)
  np.testing.assert_array_equal(batches[3]["x"], ref["x"][300:400].astype(np.float32))
  np.testing.assert_array_equal(batches[40]["y"], ref["y"][0:100])  # wraps to the start


def test_eval_batches_cover_the_split_once_with_a_mask(mnist1d_builder, tfds_dir):
  config = Config(data_dir=tfds_dir, eval_batch_size=300)
  eval_batches = data.EvalBatches(config, mnist1d_builder)
  batches = list(eval_batches)
  assert len(batches) == 4 and all(b["x"].shape == (300, 40) for b in batches)
  assert sum(b["mask"].sum() for b in batches) == 1000
  assert batches[-1]["mask"][100:].sum() == 0
  again = list(eval_batches)  # re-iterable: the same pass again, from the cache
  assert len(again) == 4 and all(np.array_equal(a["x"], b["x"]) for a, b in zip(batches, again))


def test_unknown_dataset_and_split_are_clear_errors(tfds_dir):
  with pytest.raises(ConfigError, match="unknown dataset"):
    data.builder(Config(dataset="no_such_dataset_xyz", data_dir=tfds_dir))
  with pytest.raises(ConfigError, match="has no split 'validation'"):
    data.builder(Config(eval_split="validation", data_dir=tfds_dir))
  with pytest.raises(ConfigError, match="does not exist"):
    Config(data_dir="/no/such/dir")


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_catalog_dataset_trains_with_mock_data(tmp_path, name, shape):
  """The path a user with internet takes: a TFDS catalog dataset, images -> 2D CNN."""
  from experiments import train
  config = Config(dataset=name, model="cnn", steps=3, batch_size=8, eval_batch_size=16, log_every=1,
                  eval_every=0, checkpoint_every=0,
                  model_hparams={"features": (4, 4), "kernel_size": (3, 3), "strides": (2, 2), "padding": "same"})
  with tfds.testing.mock_data(num_examples=24):
    b = data.builder(config)
    x = next(data.train_batches(config, b))["x"]
    assert x.shape == (8,) + shape and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 3 and 0.0 <= summary["eval/accuracy"] <= 1.0
