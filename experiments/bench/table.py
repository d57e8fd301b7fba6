"""A Markdown table of `experiments.bench` results (docs/benchmarks.md's tables).

    for f in experiments/flags/*.flags; do
      python -m experiments.bench --flagfile=$f --bench.steps=20 | tail -n 1 >> bench.jsonl
    done
    python -m experiments.bench.table bench.jsonl

Each input line is the JSON line `experiments.bench` ends with.
"""

from __future__ import annotations

import json
import sys

COLUMNS = ("flag file", "data", "steps/dispatch", "compile (s)", "step, median (p10-p90)", "loop / on-device inputs",
           "input wait", "throughput", "GFLOP/step", "GFLOP/s (% of matmul peak)")


def _ms(x: float) -> str:
  return f"{x:.3g} ms" if x < 1000 else f"{x / 1000:.3g} s"


def row(r: dict) -> str:
  rate = f"{r['tokens_per_s']:,.0f} tokens/s" if r.get("tokens_per_s") else f"{r['examples_per_s']:,.0f} examples/s"
  flops = f"{r['flops_per_step'] / 1e9:.3g}" if r.get("flops_per_step") else "-"
  gflops = f"{r['gflops_per_s']:.1f} ({100 * r['fraction_of_peak']:.0f}%)" if r.get("gflops_per_s") else "-"
  cells = (f"`{r.get('flagfile', r['model'])}`", r["feed"], str(r["steps_per_dispatch"]), f"{r['compile_s']:.2f}",
           f"{_ms(r['step_ms_median'])} ({_ms(r['step_ms_p10'])}-{_ms(r['step_ms_p90'])})",
           f"{_ms(r['loop_ms_per_step'])} / {_ms(r['compute_ms_per_step'])}", f"{100 * r['input_wait_share']:.1f}%",
           rate, flops, gflops)
  return "| " + " | ".join(cells) + " |"


def table(results: list[dict]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  return "\n".join(lines + [row(r) for r in results])


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit("usage: python -m experiments.bench.table RESULTS.jsonl")
  with open(argv[1], encoding="utf-8") as f:
    results = [json.loads(line) for line in f if line.strip().startswith("{")]
  print(table(results))


if __name__ == "__main__":
  main(sys.argv)
