"""PyTorch + Captum reference for the attribution throughput benchmark.

PyTorch and Captum are a baseline we measure against, never a dependency: this script
imports nothing from this package and runs in its own virtual environment (torch CPU build
and captum, e.g. /work/captum_venv):

    /work/captum_venv/bin/python experiments/bench/captum_reference.py --weights=W.npz --method=ig
    /work/captum_venv/bin/python experiments/bench/captum_reference.py --weights=W.npz --method=smoothgrad

`--weights` is an .npz holding the MNIST-1D paper CNN (Greydanus 2020, ConvBase) in PyTorch
layout (`conv0.weight` [25,1,5], `conv0.bias`, `conv1.weight` [25,25,3], `conv1.bias`,
`conv2.weight` [25,25,3], `conv2.bias`, `linear.weight` [10,125], `linear.bias`), the inputs
`x` [N,40] and `target` [N], the class to attribute. `--method=ig` is Captum's
IntegratedGradients (zero baseline, Gauss-Legendre, `--steps`); `--method=smoothgrad` is
NoiseTunnel(Saliency) with signed gradients (`--samples`, `--stdev`, by default 0.15 of the
range of `x`). After `--warmup` untimed calls it times `--repeats` calls, each attributing all
N examples, and prints one JSON line; `--out=PATH.npz` saves the last call's attributions
(and IG's convergence deltas).
"""

import argparse
import json
import time

import captum
import numpy as np
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency


class ConvBase(torch.nn.Module):
  """The MNIST-1D paper's CNN: three stride-2 convolutions with ReLU, then a linear layer."""

  def __init__(self, channels: int = 25, classes: int = 10):
    super().__init__()
    self.conv0 = torch.nn.Conv1d(1, channels, 5, stride=2, padding=1)
    self.conv1 = torch.nn.Conv1d(channels, channels, 3, stride=2, padding=1)
    self.conv2 = torch.nn.Conv1d(channels, channels, 3, stride=2, padding=1)
    self.linear = torch.nn.Linear(channels * 5, classes)

  def forward(self, x):
    h = x.view(-1, 1, x.shape[-1])
    h = self.conv0(h).relu()
    h = self.conv1(h).relu()
    h = self.conv2(h).relu()
    return self.linear(h.view(h.shape[0], -1))  # channel-major flatten: [N, 25, 5] -> [N, 125]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--weights", required=True)
  parser.add_argument("--method", choices=["ig", "smoothgrad"], default="ig")
  parser.add_argument("--steps", type=int, default=64, help="IG integration points")
  parser.add_argument("--internal_batch_size", type=int, default=None,
                      help="IG rows per forward/backward pass (default: all N*steps at once)")
  parser.add_argument("--samples", type=int, default=50, help="SmoothGrad noisy samples")
  parser.add_argument("--stdev", type=float, default=None,
                      help="SmoothGrad noise stdev (default: 0.15 * (x.max() - x.min()))")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  torch.set_num_threads(args.threads)
  data = np.load(args.weights)
  model = ConvBase()
  model.load_state_dict({k: torch.from_numpy(np.asarray(data[k], np.float32))
                         for k in model.state_dict()})
  model.eval()
  x = torch.from_numpy(np.asarray(data["x"], np.float32))
  target = torch.from_numpy(np.asarray(data["target"], np.int64))
  n = x.shape[0]

  record = {"library": "captum", "torch": torch.__version__, "captum": captum.__version__,
            "method": args.method}
  if args.method == "ig":
    ig = IntegratedGradients(model)
    record.update(steps=args.steps, internal_batch_size=args.internal_batch_size or n * args.steps)

    def attribute():
      return ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=args.steps,
                          method="gausslegendre", internal_batch_size=args.internal_batch_size,
                          return_convergence_delta=True)
  else:
    nt = NoiseTunnel(Saliency(model))
    stdev = args.stdev if args.stdev is not None else 0.15 * float(x.max() - x.min())
    record.update(samples=args.samples, stdev=stdev)

    def attribute():
      return nt.attribute(x, nt_type="smoothgrad", nt_samples=args.samples, stdevs=stdev,
                          target=target, abs=False)

  for _ in range(args.warmup):
    attribute()
  seconds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    result = attribute()
    seconds.append(time.perf_counter() - start)

  record.update(examples=n, threads=args.threads, seconds=seconds,
                examples_per_s=n / float(np.median(seconds)))
  print(json.dumps(record))
  if args.out:
    if args.method == "ig":
      attributions, delta = result
      np.savez(args.out, attributions=attributions.detach().numpy(), delta=delta.detach().numpy())
    else:
      np.savez(args.out, attributions=result.detach().numpy())


if __name__ == "__main__":
  main()
