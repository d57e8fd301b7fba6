"""Random search: 8 seeded draws of the MNIST-1D MLP's learning rate, weight decay and width.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_mlp_random.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_mlp_random.py --metric=eval/accuracy
"""

from launch.spec import Report, Sweep, choice, log_uniform

SWEEP = Sweep(
    base="experiments/flags/mnist1d_mlp_best.flags",
    random={"learning_rate": log_uniform(1e-4, 1e-2), "weight_decay": log_uniform(1e-4, 1e-1),
            "mlp.dropout": choice(0.0, 0.1, 0.2)},
    num_random=8,
    seeds=(0,),
    report=Report(metric="eval/accuracy", percent=True),
)
