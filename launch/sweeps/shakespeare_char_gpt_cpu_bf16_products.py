"""nanoGPT's CPU recipe and its tuned 1,500-step cut with bfloat16 matrix products
(--matmul_dtype=bfloat16), 3 seeds each: the same losses as in float32?

    python -m launch.sweep --sweep=launch/sweeps/shakespeare_char_gpt_cpu_bf16_products.py --backend=local --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/shakespeare_char_gpt_cpu_bf16_products.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base=["experiments/flags/shakespeare_char_gpt_cpu.flags", "experiments/flags/shakespeare_char_gpt_cpu_fast.flags"],
    flags={"matmul_dtype": "bfloat16"},
    seeds=(0, 1, 2),
    report=Report(metric="eval/loss"),
)
