"""Architectures of the character GPT on Tiny Shakespeare: layers, heads, width (a multiple
of the heads), context (block size), dropout and learning rate, on nanoGPT's CPU recipe
(`shakespeare_char_gpt_cpu`) for 1,000 steps. Scored by the validation loss (nanoGPT's split:
the last 10% of the text; this dataset has no separate test split).

    python -m launch.search --space=launch/spaces/shakespeare_char_gpt.py --trials=30 --pruner=asha
"""

from launch.space import Space


def architecture(choose):
  heads = choose.categorical("heads", (2, 4, 8))
  return {
      "gpt.num_layers": choose.int("layers", 2, 6),
      "gpt.num_heads": heads,
      "gpt.embed_dim": heads * choose.categorical("head_dim", (16, 32, 48)),
      "block_size": choose.categorical("block_size", (32, 64, 128)),
      "gpt.dropout": choose.categorical("dropout", (0.0, 0.1, 0.2)),
      "learning_rate": choose.float("learning_rate", 3e-4, 3e-3, log=True),
  }


SPACE = Space(
    base="experiments/flags/shakespeare_char_gpt_cpu.flags",
    flags={"steps": 1000, "warmup_steps": 50, "eval_every": 250, "checkpoint_every": 500},
    choose=architecture,
    metric="eval/loss",
    direction="minimize",
    retrain_flags={"steps": 2000, "warmup_steps": 100},
)
