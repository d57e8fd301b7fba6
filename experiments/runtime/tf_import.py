"""TensorFlow for tf.data only: `import tensorflow` without importing all of Keras.

`import tensorflow` (2.16 and later) eagerly imports `keras.src.optimizers` to register
Keras' optimizers with SavedModel, and that imports the whole of Keras 3, which in turn
imports matplotlib, scipy and scikit-learn: 1.5 s of the 6.6 s `import experiments.train`
takes on this project's 2-core machine (`python -X importtime`). This project uses
TensorFlow for tf.data and TFDS only, never `tf.keras`.

With `TF_USE_LEGACY_KERAS=1` TensorFlow imports `tf_keras` there instead, and where that
package is not installed it skips the import silently. `without_keras()` sets the variable
when all of these hold, and otherwise does nothing:
- TensorFlow is not imported yet in this process;
- the variable is not set already (a user's own choice wins);
- `tf_keras` is not installed (where it is, the variable would switch `tf.keras` to Keras 2).

The cost: `tf.keras` is unavailable in the process (and in child processes, which inherit
the variable). So only programs call it (`experiments.run`, `.bench`, `.sample`, `.eval_spread`,
`.sample_quality`, the tests), never a module imported as a library.
"""

from __future__ import annotations

import importlib.util
import os
import sys

VARIABLE = "TF_USE_LEGACY_KERAS"


def without_keras() -> bool:
  """Sets TF_USE_LEGACY_KERAS=1 where that skips the Keras import (module docstring); returns
  whether it set it."""
  if "tensorflow" in sys.modules or VARIABLE in os.environ:
    return False
  if importlib.util.find_spec("tf_keras") is not None:
    return False
  os.environ[VARIABLE] = "1"
  return True
