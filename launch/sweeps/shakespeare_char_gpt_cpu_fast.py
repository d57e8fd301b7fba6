"""The 1,500-step tuned recipe (shakespeare_char_gpt_cpu_fast.flags), 3 seeds.

    python -m launch.sweep --sweep=launch/sweeps/shakespeare_char_gpt_cpu_fast.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/shakespeare_char_gpt_cpu_fast.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/shakespeare_char_gpt_cpu_fast.flags",
    seeds=(0, 1, 2),
    report=Report(metric="eval/loss"),
)
