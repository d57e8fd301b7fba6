"""Grid search: the peak learning rate of nanoGPT's CPU recipe (2000 steps, the same model,
batch and schedule shape), 1 seed per value; the final 1,200-window validation loss decides.

    python -m launch.sweep --sweep=launch/sweeps/shakespeare_char_gpt_cpu_lr.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/shakespeare_char_gpt_cpu_lr.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/shakespeare_char_gpt_cpu.flags",
    grid={"learning_rate": [2e-3, 3e-3, 5e-3, 8e-3, 1.2e-2]},
    seeds=(0,),
    report=Report(metric="eval/loss"),
)
