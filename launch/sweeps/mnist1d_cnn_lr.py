"""Grid search: the MNIST-1D paper CNN's learning rate, 2 seeds per value.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_cnn_lr.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_cnn_lr.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/mnist1d_cnn.flags",
    grid={"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2]},
    seeds=(0, 1),
    flags={"steps": 3000, "shuffle": True},
    report=Report(metric="eval/accuracy", percent=True),
)
