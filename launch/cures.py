"""The cures of the overfitting experiment, alone at a few strengths: the variants the MLP's
and the CNN's sweeps share (launch/sweeps/mnist1d_cures_mlp.py, mnist1d_cures_cnn.py)."""

from __future__ import annotations

from typing import Any

from launch.spec import Report

EARLY_STOPPING = {"best_metric": "accuracy", "early_stopping_patience": 8}


def alone(model: str) -> dict[str, dict[str, Any]]:
  """Variant name -> its flags: no cure, then each cure alone (`model`: whose dropout)."""
  return {
      "none": {},
      **{f"dropout {rate}": {f"{model}.dropout": rate} for rate in (0.1, 0.3, 0.5)},
      **{f"weight decay {wd}": {"optimizer": "adamw", "weight_decay": wd} for wd in (0.01, 0.1, 0.5)},
      "augment shift": {"augment.shift": 5, "augment.shift_circular": False},
      "augment shift+scale+noise": {"augment.shift": 5, "augment.shift_circular": False, "augment.scale": 0.2,
                                    "augment.noise": 0.05},
      "augment mixup": {"augment.mixup": 0.2},
      "early stopping": EARLY_STOPPING,
      **{f"EMA {decay}": {"ema_decay": decay} for decay in (0.99, 0.999)},
      **{f"label smoothing {s}": {"classification.label_smoothing": s} for s in (0.1, 0.2)},
  }


# Test accuracy per variant, beside the validation it was chosen on and the train - test gap.
REPORT = Report(metric="eval/accuracy", percent=True, choose="val/accuracy",
                extra={"val/accuracy": "validation", "fit/accuracy": "train",
                       "fit/accuracy - eval/accuracy": "train - test", "step": "steps"})
