"""A tiny sweep for CI and tests: logistic regression on MNIST-1D, 2 learning rates x 2 seeds,
20 steps each (a few seconds per run, mostly start-up).

    python -m launch.sweep --sweep=launch/sweeps/ci_tiny.py --backend=slurm --wait
"""

from launch.spec import Sweep

SWEEP = Sweep(
    base="experiments/flags/mnist1d_logreg.flags",
    grid={"learning_rate": [1e-2, 3e-2]},
    seeds=(0, 1),
    flags={"steps": 20, "log_every": 10, "eval_every": 0, "checkpoint_every": 10},
)
