"""McMahan et al.'s (2017) communication table on MNIST-1D: rounds of FedSGD and of FedAvg (E
local epochs of batches of B) to reach a target validation accuracy, 100 clients of 36
examples, 10 a round, IID and pathological non-IID (2 label-sorted shards per client).
The clients' learning rate is a grid, and each (variant, partition) takes the rate that reaches
the target in the fewest rounds, as the paper did. With 36 examples a client, B = 50 is B = all.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_fed_communication.py --max_parallel=2
    python -m launch.fed_report --sweep=launch/sweeps/mnist1d_fed_communication.py --target=0.88
"""

from launch.spec import Report, Sweep

FEDAVG = {"steps": 1000, "eval_every": 1}
VARIANTS = {
    "FedSGD": {"fed.local_epochs": 1, "fed.local_batch_size": 0, "steps": 3000, "eval_every": 5},
    "E=1, B=10": {"fed.local_epochs": 1, "fed.local_batch_size": 10, **FEDAVG},
    "E=5, B=10": {"fed.local_epochs": 5, "fed.local_batch_size": 10, **FEDAVG},
    "E=20, B=10": {"fed.local_epochs": 20, "fed.local_batch_size": 10, **FEDAVG},
    "E=5, B=all": {"fed.local_epochs": 5, "fed.local_batch_size": 0, **FEDAVG},
    "E=20, B=all": {"fed.local_epochs": 20, "fed.local_batch_size": 0, **FEDAVG},
}

SWEEP = Sweep(
    base="experiments/flags/mnist1d_fedavg.flags",
    variants=VARIANTS,
    grid={"fed.partition": ["iid", "shards"], "fed.local_learning_rate": [0.1, 0.3, 1.0]},
    flags={"log_every": 100, "checkpoint_every": 500},
    report=Report(metric="val/accuracy", percent=True),
)
