"""--profile_steps=START:END writes a jax.profiler trace that TensorBoard's profile tab opens."""

import glob
import os

import pytest

from conftest import train_in_process
from experiments.config import Config, ConfigError


def test_the_trace_of_the_profiled_steps_is_written(tmp_path):
  summary = train_in_process("--model=mlp", "--mlp.features=8", "--steps=6", "--log_every=3", "--eval_every=0",
                             "--profile_steps=2:4", workdir=str(tmp_path))
  assert summary["step"] == 6
  traces = glob.glob(os.path.join(tmp_path, "tensorboard", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.parametrize("value", ["3", "4:2", "1:7", "a:b"])
def test_bad_profile_steps_are_one_line(value):
  with pytest.raises(ConfigError, match=f"--profile_steps={value} must be START:END with 0 <= START < END <= "
                     "--steps=6"):
    Config(steps=6, profile_steps=value)
