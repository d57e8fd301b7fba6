#!/usr/bin/env bash
# The SLURM test: a real single-node cluster on this machine (.ci/slurm_cluster.sh), then
#   1. a sweep submitted with `launch.sweep --backend=slurm` (one sbatch array) whose every
#      array task must write its summary.json;
#   2. a 2-process training run under `srun -n2` (jax.distributed over gloo) that must end
#      with the parameters of the same run in 1 process.
# It stops the daemons it started. Run from the repository root with the project's Python
# active (or PYTHON=...): bash .ci/slurm_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SUDO=""
if [[ $EUID -ne 0 ]]; then SUDO="sudo"; fi

$SUDO bash .ci/slurm_cluster.sh up
trap '$SUDO bash .ci/slurm_cluster.sh down' EXIT

work=$(mktemp -d)
export TFDS_DATA_DIR="$work/tfds"  # the jobs inherit it (sbatch exports the environment)
start=$(date +%s)

echo "== 1. a sweep through sbatch --array"
"$PYTHON" -m launch.sweep --sweep=launch/sweeps/ci_tiny.py --backend=slurm --root="$work/sweep" --wait
"$PYTHON" -m launch.sweep --sweep=launch/sweeps/ci_tiny.py --root="$work/sweep" --collect
"$PYTHON" - "$work/sweep" <<'EOF'
import json, os, sys
from launch import spec
root = sys.argv[1]
_, sweep = spec.load("launch/sweeps/ci_tiny.py")
runs = spec.expand(sweep)
for run in runs:
  with open(os.path.join(root, run.name, "summary.json")) as f:
    summary = json.load(f)
  assert summary["step"] == 20, (run.name, summary)
print(f"every one of the {len(runs)} array tasks wrote its summary.json")
EOF

echo "== 2. srun -n2: one run in two processes equals the run in one"
run=(--flagfile=experiments/flags/mnist1d_mlp.flags --shuffle=true --optimizer=sgd --learning_rate=0.1
     --steps=30 --log_every=10 --eval_every=0 --checkpoint_every=0)
srun -n2 --kill-on-bad-exit=1 "$PYTHON" -m experiments.run "${run[@]}" --workdir="$work/two" | tee "$work/two.log"
grep -q "2 process(es), 2 device(s)" "$work/two.log"
"$PYTHON" -m experiments.run "${run[@]}" --workdir="$work/one" >/dev/null
"$PYTHON" - "$work/one" "$work/two" <<'EOF'
import json, sys
import jax, numpy as np
from experiments import checkpoint
one, two = sys.argv[1:]
a, b = (jax.tree.leaves(checkpoint.Checkpoints(f"{d}/checkpoints").restore_raw()["params"]) for d in (one, two))
diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
losses = [json.load(open(f"{d}/summary.json"))["eval/loss"] for d in (one, two)]
print(f"max |parameter difference| {diff:.2e}; eval/loss {losses[0]:.6f} (1 process) vs {losses[1]:.6f} (2)")
assert diff < 1e-5 and abs(losses[0] - losses[1]) < 1e-5
EOF
rm -rf "$work"
echo "SLURM test passed in $(($(date +%s) - start)) s"
