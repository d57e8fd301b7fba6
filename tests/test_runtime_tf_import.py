"""`tf_import.without_keras()`: TensorFlow imported without Keras, unless the user chose."""

import os
import subprocess
import sys

from conftest import ROOT

PROBE = ("import os, sys; from experiments.runtime import tf_import; print(tf_import.without_keras()); "
         "import tensorflow as tf; import tensorflow_datasets; "
         "print('keras' in sys.modules, os.environ.get('TF_USE_LEGACY_KERAS')); "
         "print(tf.data.Dataset.range(3).reduce(tf.constant(0, tf.int64), lambda a, b: a + b).numpy())")


def probe(**env):
  base = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**base, **env}, capture_output=True,
                       text=True, check=True, timeout=120).stdout
  return out.split()


def test_tensorflow_starts_without_keras_and_tf_data_works():
  assert probe() == ["True", "False", "1", "3"]


def test_a_variable_the_user_set_is_kept():
  assert probe(TF_USE_LEGACY_KERAS="0") == ["False", "True", "0", "3"]  # Keras 3 imported, as TensorFlow does


def test_nothing_changes_once_tensorflow_is_imported():
  from experiments.runtime import tf_import  # pylint: disable=g-import-not-at-top
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  before = os.environ.get("TF_USE_LEGACY_KERAS")
  os.environ.pop("TF_USE_LEGACY_KERAS", None)
  try:
    assert not tf_import.without_keras()
    assert "TF_USE_LEGACY_KERAS" not in os.environ
  finally:
    if before is not None:
      os.environ["TF_USE_LEGACY_KERAS"] = before
