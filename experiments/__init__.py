"""Experiments: flags, data, the training spine, checkpoints and logs."""

import os

# TensorFlow is only our input pipeline and TensorBoard writer: keep its C++ logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
