"""Architectures of the MNIST-1D MLP: 1 to 3 hidden layers, each of its own width;
activation, residual connections (where widths match), dropout, learning rate and weight
decay. Trained as `mnist1d_mlp_best` is for 2,000 steps on the first 90% of the training
split; scored by the validation accuracy.

    python -m launch.search --space=launch/spaces/mnist1d_mlp.py --trials=50
"""

from launch.space import Space


def architecture(choose):
  layers = choose.int("layers", 1, 3)
  return {
      "mlp.features": [choose.categorical(f"width_{i}", (64, 128, 256, 512, 1024)) for i in range(layers)],
      "mlp.activation": choose.categorical("activation", ("relu", "gelu", "silu", "tanh")),
      "mlp.residual": choose.categorical("residual", (False, True)),
      "mlp.dropout": choose.categorical("dropout", (0.0, 0.1, 0.2, 0.3, 0.4)),
      "learning_rate": choose.float("learning_rate", 1e-3, 3e-2, log=True),
      "weight_decay": choose.float("weight_decay", 1e-3, 0.3, log=True),
  }


SPACE = Space(
    base="experiments/flags/mnist1d_mlp_best.flags",
    overlay=["experiments/flags/mnist1d_validation.flags"],
    flags={"steps": 2000, "warmup_steps": 100, "eval_every": 500, "log_every": 500, "checkpoint_every": 1000,
           "eval_train": False,
           "runtime.cpu_threads": 1},
    choose=architecture,
    metric="val/accuracy",
    retrain_flags={"steps": 8000, "warmup_steps": 200, "eval_every": 1000, "checkpoint_every": 2000},
)
