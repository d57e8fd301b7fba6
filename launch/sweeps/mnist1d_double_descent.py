"""Deep double descent on MNIST-1D: test error against the MLP's width, with 15% label noise
and without (experiments/flags/mnist1d_double_descent.flags; docs/results.md).

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_double_descent.py --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_double_descent.py
    python -m launch.report --sweep=launch/sweeps/mnist1d_double_descent.py --metric=fit/accuracy --error --out=train
"""

from launch.spec import Report, Sweep

# 20 widths, about geometrically spaced from 2 to 300.
WIDTHS = (2, 3, 4, 5, 6, 7, 10, 13, 16, 21, 28, 36, 47, 62, 80, 104, 136, 177, 230, 300)

SWEEP = Sweep(
    base="experiments/flags/mnist1d_double_descent.flags",
    grid={"mlp.features": [f"{w},{w}" for w in WIDTHS], "label_noise": [0.15, 0.0]},
    seeds=(0,),
    report=Report(metric="eval/accuracy", percent=True, error=True, x_label="width of both hidden layers",
                  # The MNIST-1D repository's notebook (15% label noise): a peak of about 54% near
                  # widths 47-61, about 45.5% at width 300 (../shared/ANCHORS.md).
                  references={"notebook, 15% noise": [(47, 0.54), (61, 0.54), (300, 0.455)]},
                  extra={"fit/accuracy": "train accuracy", "num_params": "parameters",
                         "wall_time_s": "run time (s)"}),
)
