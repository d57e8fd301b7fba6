"""Privacy against accuracy on MNIST-1D: DP-FedAvg (McMahan et al. 2018: each client's update
clipped to norm 1, the clipped updates averaged with equal weights, Gaussian noise of
noise_multiplier x clip on their sum). Differential privacy needs many clients: the 230,400
training examples of the same generator's 256k set (less its validation 10%) among 6,400
clients of 36, 100 a round (q = 1/64), E = 1, B = 10, client learning rate 0.1, 500 rounds;
epsilon at delta = 1 / 6,400^1.1 from dp-accounting's Renyi-DP accountant.

    python -m launch.sweep --sweep=launch/sweeps/mnist1d_fed_privacy.py --max_parallel=2
    python -m launch.fed_report --sweep=launch/sweeps/mnist1d_fed_privacy.py --target=0.8 --choose_over=
"""

from launch.spec import Report, Sweep

SWEEP = Sweep(
    base="experiments/flags/mnist1d_fedavg.flags",
    grid={"fed.noise_multiplier": [0.0, 0.5, 1.0, 2.0]},
    seeds=(0,),
    flags={"dataset": "mnist1d/train_256k", "fed.clients": 6400, "fed.clients_per_round": 100,
           "fed.local_epochs": 1, "fed.local_batch_size": 10, "fed.clip_norm": 1.0, "fed.local_learning_rate": 0.1,
           "steps": 500, "eval_every": 10, "log_every": 100, "checkpoint_every": 500},
    report=Report(metric="val/accuracy", percent=True, extra={"privacy_epsilon": "epsilon"}),
)
