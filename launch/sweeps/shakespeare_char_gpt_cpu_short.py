"""Grid search: how few steps nanoGPT's CPU recipe needs at a tuned peak learning rate (the
same model, batch, warmup and cosine shape, the schedule ending at the last step), 1 seed
per point; the final 1,200-window validation loss decides.

    python -m launch.sweep --sweep=launch/sweeps/shakespeare_char_gpt_cpu_short.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/shakespeare_char_gpt_cpu_short.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/shakespeare_char_gpt_cpu_best.flags",
    grid={"steps": [500, 750, 1000, 1250, 1500], "learning_rate": [5e-3, 8e-3]},
    seeds=(0,),
    report=Report(metric="eval/loss"),
)
