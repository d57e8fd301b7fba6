"""Architectures of the MNIST-1D CNN: 1 to 4 convolutions, each with its own width, kernel
and stride; normalisation, activation, pooling, head, an optional hidden layer, dropout, and
the learning rate and weight decay. Trained as `mnist1d_cnn_best` is (AdamW, warmup and
cosine, batch 100) for 2,000 steps on the first 90% of the training split; scored by the
validation accuracy (the last 400 training examples) at each evaluation. `--max_params=5210`
keeps the paper CNN's budget.

    python -m launch.search --space=launch/spaces/mnist1d_cnn.py --max_params=5210 --time_budget=1h
"""

from launch.space import Space


def architecture(choose):
  layers = choose.int("layers", 1, 4)
  norm = choose.categorical("norm", ("none", "batch", "layer"))
  pool = choose.categorical("pool", ("none", "max"))
  flags = {
      "cnn.features": [choose.categorical(f"channels_{i}", (8, 12, 16, 24, 32, 48, 64)) for i in range(layers)],
      "cnn.kernel_size": [choose.categorical(f"kernel_{i}", (3, 5, 7, 9)) for i in range(layers)],
      # with max pooling (which halves each layer's length) the convolutions keep stride 1
      "cnn.strides": [1 if pool == "max" else choose.categorical(f"stride_{i}", (1, 2)) for i in range(layers)],
      "cnn.norm": norm,
      "cnn.pool": pool,
      "cnn.activation": choose.categorical("activation", ("relu", "gelu", "silu")),
      "cnn.head": choose.categorical("head", ("flatten", "avg")),
      "cnn.dropout": choose.categorical("dropout", (0.0, 0.1, 0.2, 0.3)),
      "learning_rate": choose.float("learning_rate", 1e-3, 3e-2, log=True),
      "weight_decay": choose.float("weight_decay", 1e-3, 0.3, log=True),
  }
  hidden = choose.categorical("hidden", (0, 32, 64, 128))
  flags["cnn.hidden"] = hidden
  return flags


SPACE = Space(
    base="experiments/flags/mnist1d_cnn_best.flags",
    overlay=["experiments/flags/mnist1d_validation.flags"],
    flags={"steps": 2000, "warmup_steps": 100, "eval_every": 500, "log_every": 500, "checkpoint_every": 1000,
           "eval_train": False,
           "runtime.cpu_threads": 1, "cnn.padding": "same"},
    choose=architecture,
    metric="val/accuracy",
    # The final retrain: the recipe of mnist1d_cnn_best (8,000 steps).
    retrain_flags={"steps": 8000, "warmup_steps": 200, "eval_every": 1000, "checkpoint_every": 2000},
)
