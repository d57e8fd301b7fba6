"""host_memory.keep_freed: a freed block's pages are reused, not faulted in anew."""

import platform
import subprocess
import sys

import pytest

# Allocates, fills and frees a 64 MiB block (above any mmap threshold of glibc's) 6 times and
# prints the page faults of the last 5, before and after keep_freed.
_SCRIPT = r"""
import ctypes, resource, sys
from experiments import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20

def faults():
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
print(first, applied, host_memory.applied(), faults())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_pages_are_reused():
  out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout.split()
  before, applied, reported, after = int(out[0]), out[1], out[2], int(out[3])
  pages = 5 * (64 << 20) // 4096
  assert applied == reported == "True"
  assert before > 0.9 * pages  # each allocation mapped afresh: a fault per page touched
  assert after < 0.05 * pages  # the heap keeps the block: its pages are already there
