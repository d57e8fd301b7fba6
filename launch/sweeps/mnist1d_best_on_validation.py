"""The `*_best` MNIST-1D recipes chosen again, on validation: their learning rate and weight
decay over a grid, each run trained on the first 90% of the training split; per model the
point with the best mean validation accuracy is the choice, and its test accuracy is the
figure reported (docs/results.md). The earlier `*_best` files were tuned by looking at the
test split. (`mnist1d_gru_best` takes about 2.5 minutes a run here: left out of the grid.)

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_best_on_validation.py --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_best_on_validation.py
"""

from launch.spec import Report, Sweep

FLAGS = "experiments/flags/"

SWEEP = Sweep(
    base=[FLAGS + "mnist1d_mlp_best.flags", FLAGS + "mnist1d_cnn_best.flags"],
    overlay=[FLAGS + "mnist1d_validation.flags"],
    grid={"learning_rate": [1e-3, 3e-3, 1e-2], "weight_decay": [0.01, 0.05, 0.2]},
    seeds=(0, 1, 2),
    flags={"eval_every": 1000},
    report=Report(metric="eval/accuracy", percent=True, x="learning_rate", lines=("flagfile", "weight_decay"),
                  choose="val/accuracy",
                  extra={"val/accuracy": "validation", "fit/accuracy - eval/accuracy": "train - test"}),
)
