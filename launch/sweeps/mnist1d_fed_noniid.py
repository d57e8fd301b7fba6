"""The non-IID penalty and its cures on MNIST-1D: Dirichlet(alpha) label skew over 100 clients
(alpha 0.1: one or two classes each; 100: near IID), FedAvg against FedProx (mu 0.01),
SCAFFOLD and FedAdam (server Adam, lr 0.01), E = 5, B = 10, client learning rate 0.1, 500 rounds, 3 seeds (each seed
draws its own partition, client samples and initialisation).

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_fed_noniid.py --max_parallel=2
    python -m launch.fed_report --sweep=launch/sweeps/mnist1d_fed_noniid.py --target=0.8
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/mnist1d_fedavg.flags",
    variants={
        "FedAvg": {},
        "FedProx": {"fed.algorithm": "fedprox", "fed.prox_mu": 0.01},
        "SCAFFOLD": {"fed.algorithm": "scaffold"},
        "FedAdam": {"optimizer": "adam", "learning_rate": 0.01},
    },
    grid={"fed.alpha": [0.1, 0.5, 100.0]},
    seeds=(0, 1, 2),
    flags={"fed.partition": "dirichlet", "fed.local_learning_rate": 0.1, "steps": 500, "eval_every": 5,
           "log_every": 100, "checkpoint_every": 300},
    report=Report(metric="val/accuracy", percent=True),
)
