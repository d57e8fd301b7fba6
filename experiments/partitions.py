"""Client partitions for federated learning: which examples each simulated client holds.

Each partition is a pure function of the labels (or of the text) and a seed, and returns a
list of index arrays, one per client, that together cover every example exactly once:

- `iid`: a random permutation cut into near-equal parts.
- `shards`: pathological non-IID (McMahan et al. 2017): examples sorted by label, cut into
  `clients x shards_per_client` equal shards, and each client given `shards_per_client`
  shards at random (mostly 2 labels per client at 2 shards).
- `dirichlet`: label skew (Hsu et al. 2019): each class's examples are split among the
  clients in proportions drawn from Dirichlet(alpha) (small alpha: a few classes per client;
  large alpha: near IID), redrawn until no client is empty.
- `quantity_skew`: client sizes from a log-normal (sigma) or a power law (exponent), the
  examples IID among them.
- `speaking_roles`: natural clients of a play's text, one per speaking role (all of a
  role's lines), as LEAF's Shakespeare benchmark cuts the complete works.

`summary` describes a partition (clients, sizes, classes per client) and `histogram` draws it.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

KINDS = ("iid", "shards", "dirichlet", "quantity_skew")


def _check_clients(num_clients: int, n: int) -> None:
  if num_clients < 1:
    raise ValueError(f"the number of clients must be positive; got {num_clients}")
  if num_clients > n:
    raise ValueError(f"{num_clients} clients cannot each hold an example of {n}")


def iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
  _check_clients(num_clients, n)
  order = np.random.default_rng([seed, 1]).permutation(n)
  return [np.sort(part) for part in np.array_split(order, num_clients)]


def shards(labels: np.ndarray, num_clients: int, seed: int, shards_per_client: int = 2) -> list[np.ndarray]:
  """McMahan et al.'s pathological partition: sort by label (ties in a random order), cut into
  equal shards, give each client `shards_per_client` of them at random."""
  labels = np.asarray(labels)
  total = num_clients * shards_per_client
  if shards_per_client < 1:
    raise ValueError(f"shards per client must be positive; got {shards_per_client}")
  _check_clients(total, len(labels))
  rng = np.random.default_rng([seed, 2])
  shuffled = rng.permutation(len(labels))
  by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
  pieces = np.array_split(by_label, total)
  dealt = rng.permutation(total).reshape(num_clients, shards_per_client)
  return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int, max_tries: int = 100) -> list[np.ndarray]:
  """Each class split among the clients in Dirichlet(alpha) proportions; redrawn (up to
  `max_tries` times) while some client would be empty."""
  if not alpha > 0:
    raise ValueError(f"the Dirichlet concentration alpha must be > 0; got {alpha}")
  labels = np.asarray(labels)
  _check_clients(num_clients, len(labels))
  rng = np.random.default_rng([seed, 3])
  classes = np.unique(labels)
  for _ in range(max_tries):
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in classes:
      members = rng.permutation(np.flatnonzero(labels == c))
      cuts = np.floor(np.cumsum(rng.dirichlet(np.full(num_clients, alpha)))[:-1] * len(members)).astype(int)
      for client, piece in enumerate(np.split(members, cuts)):
        parts[client].append(piece)
    out = [np.sort(np.concatenate(p)) for p in parts]
    if min(len(p) for p in out) > 0:
      return out
  raise ValueError(f"Dirichlet(alpha={alpha}) left a client empty in {max_tries} draws of {num_clients} clients "
                   f"over {len(labels)} examples: use fewer clients or a larger alpha")


def quantity_skew(n: int, num_clients: int, seed: int, sigma: float = 1.0, power: float | None = None) -> list[np.ndarray]:
  """Client sizes proportional to log-normal(0, sigma) draws, or to rank^-power (a power law),
  each client at least 1 example; examples assigned IID."""
  _check_clients(num_clients, n)
  rng = np.random.default_rng([seed, 4])
  if power is not None:
    if power < 0:
      raise ValueError(f"the power law's exponent must be >= 0; got {power}")
    weights = rng.permutation(np.arange(1, num_clients + 1) ** -float(power))
  else:
    if sigma < 0:
      raise ValueError(f"the log-normal's sigma must be >= 0; got {sigma}")
    weights = rng.lognormal(0.0, sigma, num_clients)
  extra = n - num_clients  # one example each first, the rest in proportion
  sizes = 1 + np.floor(weights / weights.sum() * extra).astype(int)
  for i in np.argsort(-weights)[:n - sizes.sum()]:  # the remainder to the largest
    sizes[i] += 1
  order = rng.permutation(n)
  return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


_ROLE = re.compile(r"^([A-Z][A-Za-z' .-]*):$")


def speaking_roles(text: str, min_chars: int = 1) -> dict[str, str]:
  """{role: everything the role says}, in order of first appearance: a line "NAME:" opens a
  speech, which runs to the next blank line (the layout of Tiny Shakespeare). Roles with fewer
  than `min_chars` characters are left out."""
  roles: dict[str, list[str]] = {}
  speaker, lines = None, []

  def close():
    if speaker is not None and lines:
      roles.setdefault(speaker, []).append("\n".join(lines) + "\n")

  for line in text.splitlines():
    stripped = line.strip()
    if not stripped:  # a blank line ends the speech
      close()
      speaker, lines = None, []
    elif speaker is None:
      match = _ROLE.match(stripped)
      speaker, lines = (match.group(1).strip(), []) if match else (None, [])
    else:
      lines.append(line)
  close()
  return {role: "".join(speeches) for role, speeches in roles.items() if sum(map(len, speeches)) >= min_chars}


def summary(parts: Sequence[np.ndarray], labels: np.ndarray | None = None) -> dict:
  """Clients, their sizes, and (with labels) how many classes each holds and the largest
  class's share of each."""
  sizes = np.array([len(p) for p in parts])
  out = {"clients": len(parts), "examples": int(sizes.sum()), "size_min": int(sizes.min()),
         "size_median": float(np.median(sizes)), "size_max": int(sizes.max())}
  if labels is not None:
    labels = np.asarray(labels)
    classes = [np.unique(labels[p]) for p in parts]
    counts = [np.unique(labels[p], return_counts=True)[1] for p in parts]
    out.update({"classes_per_client_mean": float(np.mean([len(c) for c in classes])),
                "classes_per_client_min": int(min(len(c) for c in classes)),
                "classes_per_client_max": int(max(len(c) for c in classes)),
                "top_class_share_mean": float(np.mean([c.max() / c.sum() for c in counts]))})
  return out


def histogram(path: str, parts: Sequence[np.ndarray], labels: np.ndarray | None = None, title: str = "") -> None:
  """Client sizes, stacked by class when labelled (at most 100 clients drawn)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  shown = list(parts)[:100]
  fig, ax = plt.subplots(figsize=(max(5.0, 0.08 * len(shown) + 2), 3.5))
  x = np.arange(len(shown))
  if labels is None:
    ax.bar(x, [len(p) for p in shown], width=0.9)
  else:
    labels = np.asarray(labels)
    bottom = np.zeros(len(shown))
    for c in np.unique(labels):
      counts = np.array([(labels[p] == c).sum() for p in shown])
      ax.bar(x, counts, bottom=bottom, width=0.9, label=str(c))
      bottom += counts
    ax.legend(fontsize=6, ncol=2, title="class", title_fontsize=7)
  ax.set_xlabel("client" + (f" (first 100 of {len(parts)})" if len(parts) > 100 else ""))
  ax.set_ylabel("examples")
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
