"""host_memory.keep_freed: a freed block's pages are reused, not faulted in anew; host_memory.fit:
until a dispatch's buffer is too large a share of memory to keep copies of."""

import platform
import subprocess
import sys

import pytest

# Allocates, fills and frees a 64 MiB block (above any mmap threshold of glibc's) 6 times and
# prints the page faults of the last 5: before keep_freed, after it, after fitting a small
# dispatch buffer (kept) and, for a 128 MiB block (larger than any the heap has kept), after
# fitting one above 1/64 of physical memory (handed back to mmap).
_SCRIPT = r"""
import ctypes, resource, sys
from experiments import host_memory
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
