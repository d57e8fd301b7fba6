"""experiments.partitions: every example held by exactly one client, with the stated label statistics."""

import numpy as np
import pytest

from experiments import partitions as P

LABELS = np.repeat(np.arange(10), 400)[np.random.default_rng(0).permutation(4000)]  # MNIST-1D's 4,000, balanced


def _covers_once(parts, n):
  together = np.sort(np.concatenate(parts))
  np.testing.assert_array_equal(together, np.arange(n))
  assert min(len(p) for p in parts) > 0


def test_iid_is_even_and_seeded():
  parts = P.iid(4000, 100, seed=0)
  _covers_once(parts, 4000)
  assert {len(p) for p in parts} == {40}
  assert P.summary(parts, LABELS)["classes_per_client_mean"] > 9
  assert all(np.array_equal(a, b) for a, b in zip(parts, P.iid(4000, 100, seed=0)))
  assert not all(np.array_equal(a, b) for a, b in zip(parts, P.iid(4000, 100, seed=1)))


def test_pathological_shards_give_each_client_about_two_labels():
  parts = P.shards(LABELS, 100, seed=0)
  _covers_once(parts, 4000)
  assert {len(p) for p in parts} == {40}  # two shards of 20
  stats = P.summary(parts, LABELS)
  # a shard of 20 sorted labels holds one label (or two where it straddles a boundary)
  assert stats["classes_per_client_max"] <= 4 and stats["classes_per_client_mean"] <= 2.2
  assert stats["top_class_share_mean"] >= 0.5


def test_dirichlet_alpha_sets_the_label_skew():
  skewed = P.dirichlet(LABELS, 100, alpha=0.1, seed=0)
  near_iid = P.dirichlet(LABELS, 100, alpha=100.0, seed=0)
  for parts in (skewed, near_iid):
    _covers_once(parts, 4000)
  a, b = P.summary(skewed, LABELS), P.summary(near_iid, LABELS)
  assert a["top_class_share_mean"] > 0.6 and a["classes_per_client_mean"] < 4
  assert b["top_class_share_mean"] < 0.25 and b["classes_per_client_mean"] > 9
  with pytest.raises(ValueError, match=r"^the Dirichlet concentration alpha must be > 0; got 0.0$"):
    P.dirichlet(LABELS, 10, alpha=0.0, seed=0)
  with pytest.raises(ValueError, match="left a client empty in 5 draws of 50 clients over 60 examples"):
    P.dirichlet(LABELS[:60], 50, alpha=0.01, seed=0, max_tries=5)


def test_quantity_skew_sizes():
  parts = P.quantity_skew(4000, 100, seed=0, sigma=1.5)
  _covers_once(parts, 4000)
  sizes = np.array([len(p) for p in parts])
  assert sizes.max() > 5 * np.median(sizes)
  power = np.sort([len(p) for p in P.quantity_skew(4000, 50, seed=0, power=1.0)])[::-1]
  assert power[0] > 10 * power[-1] and power.sum() == 4000
  with pytest.raises(ValueError, match="200 clients cannot each hold an example of 100"):
    P.quantity_skew(100, 200, seed=0)


def test_speaking_roles_are_the_lines_of_each_role():
  text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\nIs't a verdict?\n\n"
          "MENENIUS:\nWhy, masters, my good friends:\n")
  roles = P.speaking_roles(text)
  assert list(roles) == ["First Citizen", "All", "MENENIUS"]
  assert roles["First Citizen"] == ("Before we proceed any further, hear me speak.\n"
                                    "You are all resolved rather to die than to famish?\nIs't a verdict?\n")
  assert roles["MENENIUS"] == "Why, masters, my good friends:\n"
  assert list(P.speaking_roles(text, min_chars=20)) == ["First Citizen", "MENENIUS"]


def test_summary_and_histogram(tmp_path):
  parts = P.dirichlet(LABELS, 20, alpha=0.5, seed=0)
  stats = P.summary(parts, LABELS)
  assert stats["clients"] == 20 and stats["examples"] == 4000
  P.histogram(str(tmp_path / "clients.png"), parts, LABELS, title="Dirichlet(0.5), 20 clients")
  assert (tmp_path / "clients.png").stat().st_size > 0
