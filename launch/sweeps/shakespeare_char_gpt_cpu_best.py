"""nanoGPT's CPU recipe at its tuned learning rate (5e-3), 3 seeds.

    python -m launch.sweep --sweep=launch/sweeps/shakespeare_char_gpt_cpu_best.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/shakespeare_char_gpt_cpu_best.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/shakespeare_char_gpt_cpu_best.flags",
    seeds=(0, 1, 2),
    report=Report(metric="eval/loss"),
)
