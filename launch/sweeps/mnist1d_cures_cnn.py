"""Overfitting and its cures: the paper's MNIST-1D CNN with each cure alone, at a few
strengths, and combined (experiments/flags/mnist1d_validation.flags; docs/results.md). The
combined variant takes each cure at the strength that was best on validation.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_cures_cnn.py --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_cures_cnn.py
"""

from launch import cures
from launch.cures import EARLY_STOPPING
from launch.spec import Sweep

VARIANTS = cures.alone("cnn")
# Combined: each cure that beat "none" on mean validation accuracy alone, at its best strength
# there (dropout 0.3, shift+scale+noise, early stopping, EMA 0.99, label smoothing 0.2; not
# weight decay), and the same with a budget of 20,000 steps that early stopping cuts short.
COMBINED = {**VARIANTS["dropout 0.3"], **VARIANTS["augment shift+scale+noise"], **EARLY_STOPPING,
            **VARIANTS["EMA 0.99"], **VARIANTS["label smoothing 0.2"]}
VARIANTS["combined"] = COMBINED
VARIANTS["combined, up to 20k steps"] = {**COMBINED, "steps": 20_000}

SWEEP = Sweep(
    base="experiments/flags/mnist1d_cnn.flags",
    overlay=["experiments/flags/mnist1d_validation.flags"],
    variants=VARIANTS,
    seeds=(0, 1, 2),
    report=cures.REPORT,
)
