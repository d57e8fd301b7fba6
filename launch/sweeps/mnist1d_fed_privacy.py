"""Privacy against accuracy on MNIST-1D: DP-FedAvg (each client's update clipped to norm 1,
the clipped updates averaged with equal weights, Gaussian noise of noise_multiplier x clip on
their sum), 100 clients, 20 a round, E = 5, B = 10, client learning rate 0.1, 500 rounds; epsilon at delta =
1 / 100^1.1 from dp-accounting's Renyi-DP accountant.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_fed_privacy.py --max_parallel=2
    python -m launch.report --sweep=launch/sweeps/mnist1d_fed_privacy.py
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/mnist1d_fedavg.flags",
    grid={"fed.noise_multiplier": [0.0, 0.5, 1.0, 2.0]},
    seeds=(0,),
    flags={"fed.clients_per_round": 20, "fed.clip_norm": 1.0, "fed.local_learning_rate": 0.1, "steps": 500,
           "eval_every": 10, "log_every": 100, "checkpoint_every": 300},
    report=Report(metric="val/accuracy", percent=True, extra={"privacy_epsilon": "epsilon"}),
)
