"""How much data: the paper's four MNIST-1D models over training sets of 250 to 230,400
examples (experiments/flags/mnist1d_learning_curve.flags; docs/results.md), test error on
log-log axes with a power law fitted per model, and the same runs against their training
FLOPs with the Pareto front.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_data.py --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_data.py
    python -m launch.report --sweep=launch/sweeps/mnist1d_data.py --x=train_flops --pareto --out=compute
"""

from launch.spec import Report, Sweep

FLAGS = "experiments/flags/"
MODELS = {  # flag file -> the paper's test accuracy (Greydanus 2020, 4,000 training examples)
    "mnist1d_logreg.flags": 0.32,
    "mnist1d_mlp.flags": 0.68,
    "mnist1d_cnn.flags": 0.94,
    "mnist1d_gru.flags": 0.91,
}
# 250 .. 230,400: the 256,000 generated examples less the validation tenth (25,600).
SIZES = (250, 1000, 4000, 16_000, 64_000, 230_400)

SWEEP = Sweep(
    base=[FLAGS + name for name in MODELS],
    grid={"train_examples": list(SIZES)},
    seeds=(0,),
    overlay=[FLAGS + "mnist1d_learning_curve.flags"],  # after each model's flag file: its flags win
    report=Report(metric="eval/accuracy", percent=True, error=True, x="train_examples", log_y=True,
                  x_label="training examples",
                  # From 1,000 on: at 250 every model is near chance (the small-data region).
                  fit="power_law", fit_range=(1000, 230_400),
                  targets={FLAGS + name: acc for name, acc in MODELS.items()},
                  # The MNIST-1D repository's pooling notebook: a max-pool CNN at 78.2% with
                  # 1,000 training examples, 98.1% with 50,000 (../shared/ANCHORS.md).
                  references={"max-pool CNN, pooling notebook": [(1000, 1 - 0.782), (50_000, 1 - 0.981)]},
                  extra={"best_step": "best step", "fit/accuracy": "train accuracy", "train_flops": "train FLOPs",
                         "wall_time_s": "run time (s)"}),
)
