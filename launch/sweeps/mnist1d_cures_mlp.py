"""Overfitting and its cures: the paper's MNIST-1D MLP with each cure alone, at a few
strengths, and combined (experiments/flags/mnist1d_validation.flags; docs/results.md). The
combined variant takes each cure at the strength that was best on validation.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_cures_mlp.py --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_cures_mlp.py
"""

from launch import cures
from launch.cures import EARLY_STOPPING
from launch.spec import Sweep

VARIANTS = cures.alone("mlp")
# Combined: each cure that beat "none" on mean validation accuracy alone, at its best strength
# there (weight decay 0.1, the shift, early stopping; not dropout, EMA, label smoothing or
# mixup), and the same with a budget of 20,000 steps that early stopping cuts short.
COMBINED = {"optimizer": "adamw", "weight_decay": 0.1, **VARIANTS["augment shift"], **EARLY_STOPPING}
VARIANTS["combined"] = COMBINED
VARIANTS["combined, up to 20k steps"] = {**COMBINED, "steps": 20_000}
# A second round on validation, since the combination fell short of the shift alone (its
# training accuracy: 80%, underfitting): the augmentations with a longer budget and a patient
# early stop, with and without the moving average.
LONG = {"steps": 20_000, "best_metric": "accuracy", "early_stopping_patience": 20}
VARIANTS["shift, up to 20k steps"] = {**VARIANTS["augment shift"], **LONG}
VARIANTS["shift+scale+noise, up to 20k steps"] = {**VARIANTS["augment shift+scale+noise"], **LONG}
VARIANTS["shift+scale+noise, EMA 0.99, up to 20k steps"] = {**VARIANTS["augment shift+scale+noise"],
                                                             "ema_decay": 0.99, **LONG}
VARIANTS["circular shift+noise, EMA 0.99, up to 20k steps"] = {"augment.shift": 5, "augment.noise": 0.05,
                                                               "ema_decay": 0.99, **LONG}

SWEEP = Sweep(
    base="experiments/flags/mnist1d_mlp.flags",
    overlay=["experiments/flags/mnist1d_validation.flags"],
    variants=VARIANTS,
    seeds=(0, 1, 2),
    report=cures.REPORT,
)
