"""host_memory.keep_freed: a freed block's pages are reused, not faulted in anew; host_memory.fit:
until a dispatch's buffer is too large a share of memory to keep copies of; use_huge_pages: one
restart, and huge pages after it."""

import os
import platform
import subprocess
import sys

import pytest

from experiments.runtime import host_memory

# Allocates, fills and frees a 64 MiB block (above any mmap threshold of glibc's) 6 times and
# prints the page faults of the last 5: before keep_freed, after it, after fitting a small
# dispatch buffer (kept) and, for a 128 MiB block (larger than any the heap has kept), after
# fitting one above 1/64 of physical memory (handed back to mmap).
_SCRIPT = r"""
import ctypes, resource, sys
from experiments.runtime import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20

def faults(size=size):
  counts = []
  for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  return sum(counts[1:])

first = faults()
applied = host_memory.keep_freed()
reported = host_memory.applied()
kept = faults()
small = host_memory.fit(size)
kept_small = faults()
large = host_memory.fit(host_memory.physical_memory() // 32)
print(first, applied, reported, kept, small, kept_small, large, faults(2 * size), host_memory.keep_freed())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_pages_are_reused():
  out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout.split()
  before, applied, reported, after = int(out[0]), out[1], out[2], int(out[3])
  small, after_small, large, after_large, again = out[4], int(out[5]), out[6], int(out[7]), out[8]
  pages = 5 * (64 << 20) // 4096
  assert applied == reported == "True"
  assert before > 0.9 * pages  # each allocation mapped afresh: a fault per page touched
  assert after < 0.05 * pages  # the heap keeps the block: its pages are already there
  assert small == "True" and after_small < 0.05 * pages  # a small buffer: still kept
  assert large == again == "False"  # a large one: handed back to mmap for good
  assert after_large > 0.9 * 2 * pages


# Starts (printing "start"), asks for huge pages (the first time: a restart), then prints the
# tunable and the page faults of touching a freshly mapped 64 MiB block, 5 times.
_HUGE = r"""
import ctypes, os, resource
print("start", flush=True)
from experiments.runtime import host_memory
on = host_memory.use_huge_pages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
total = 0
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(64 << 20)
  ctypes.memset(block, 1, 64 << 20)
  libc.free(block)
  total += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(on, host_memory.huge_pages(), os.environ.get("GLIBC_TUNABLES"), total)
"""


@pytest.mark.skipif(not host_memory._huge_pages_possible(), reason="glibc 2.35+ and transparent huge pages only")
@pytest.mark.parametrize("preset", [None, "glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=4"])
def test_the_program_restarts_once_with_huge_pages(preset):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if preset:
    env["GLIBC_TUNABLES"] = preset
  out = subprocess.run([sys.executable, "-c", _HUGE], capture_output=True, text=True, check=True, env=env).stdout.split()
  pages = 5 * (64 << 20) // 4096
  if preset == "glibc.malloc.hugetlb=0":  # the user's choice stands: no restart, 4 KiB pages
    assert out == ["start", "False", "False", preset, out[-1]] and int(out[-1]) > 0.9 * pages
  else:  # restarted once with the tunable added to the user's: a fault per 2 MiB, not per 4 KiB
    tunables = ":".join(filter(None, (preset, "glibc.malloc.hugetlb=1")))
    assert out[:-1] == ["start", "start", "True", "True", tunables] and int(out[-1]) < 0.2 * pages
