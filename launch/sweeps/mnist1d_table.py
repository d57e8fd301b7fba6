"""The README's MNIST-1D table: every MNIST-1D flag file, 3 seeds each.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_table.py --backend=local
    python -m launch.report --sweep=launch/sweeps/mnist1d_table.py
"""

from launch.spec import Report, Sweep

FLAGS = "experiments/flags/"
ROWS = {  # flag file -> the README's row label and the paper's test accuracy (Greydanus 2020)
    "mnist1d_logreg.flags": ("Logistic regression", "32%"),
    "mnist1d_mlp.flags": ("MLP", "68%"),
    "mnist1d_cnn.flags": ("CNN", "94%"),
    "mnist1d_gru.flags": ("GRU", "91%"),
    "mnist1d_cnn_best.flags": ("CNN, ours (`cnn_best`)", "94% (CNN); human 96%"),
    "mnist1d_mlp_best.flags": ("MLP, ours (`mlp_best`)", "68% (MLP)"),
    "mnist1d_gru_best.flags": ("GRU, ours (`gru_best`)", "91% (GRU)"),
}

SWEEP = Sweep(
    base=[FLAGS + name for name in ROWS],
    seeds=(0, 1, 2),
    report=Report(
        metric="eval/accuracy", percent=True,
        labels={FLAGS + name: {"model": label, "paper": paper} for name, (label, paper) in ROWS.items()},
        extra={"train_steps_per_sec": "train steps/s", "wall_time_s": "run time (s)"}),
)
