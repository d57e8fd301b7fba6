"""Freed host memory kept in the process, so that XLA's CPU buffers do not page-fault anew on
every dispatch.

XLA's CPU runtime allocates each dispatch's buffers (activations, gradients, temporaries)
with the C library's `malloc` and frees them when the dispatch ends. glibc returns large
blocks to the kernel when they are freed (blocks above its mmap threshold, and the top of
the heap beyond its trim threshold), so the next dispatch gets fresh pages, and the kernel
zeroes each one on first touch: a page fault per 4 KiB page. The GPT CPU recipe's step took
about 6,850 of them (some 27 MB), each a few microseconds under a hypervisor: a fifth of its
step time.

`keep_freed()` tells glibc to serve allocations from one heap (`M_ARENA_MAX` = 1: a thread's
own arena hands a block above 64 MiB to mmap whatever the settings), never from mmap
(`M_MMAP_MAX` = 0), and never to give the heap's top back (`M_TRIM_THRESHOLD`): the pages of
one dispatch are reused by the next, as a caching allocator reuses device memory. The cost:
the process keeps its peak heap until it exits. Call it before JAX starts its threads (a
thread keeps the arena it first allocated from). It does nothing where the C library is not
glibc, and nothing is lost if it cannot act: only speed.

The cost grows with the dispatch's buffer: XLA may allocate the next dispatch's buffer (on
another thread) before it frees the last one, so the heap holds two or three of them where
mmap'd blocks, returned at once, hold one. The GPU-size GPT's 5.3 GB buffer took the heap to
16.5 GB (6.4 GB with mmap) for a step of 9 instead of 13 s. `fit(buffer_bytes)`, called with
each compiled step's temporary buffer, hands blocks above 32 MiB back to mmap (glibc's
default: returned when freed) once a buffer exceeds 1/64 of physical memory, so the heap's
extra copies stay within a few percent of it (free blocks the heap already holds are still
reused). Fitted before the first dispatch, the GPU-size GPT peaks at 6.3 GB again, at its old
step time; `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment (glibc 2.35+; it cannot
be set from inside the process) maps those blocks in transparent huge pages, whose faults are
512 times fewer: 10.9 s a step, at 6.3 GB, on the machine that gave 9 s (kept heap) and 13.5 s.

`use_huge_pages()`, called first thing by `experiments.run` and `experiments.bench` when run
as programs, sets that variable and re-executes the program once (the same arguments, the
same process id) where it is missing, glibc is 2.35 or newer and the kernel's transparent
huge pages are not off. A `GLIBC_TUNABLES` that already names `glibc.malloc.hugetlb` is left
as it is: `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns huge pages off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER = -1  # glibc takes the threshold as a size_t: -1 is its largest value, i.e. never trim
MMAP_MAX_DEFAULT = 65536  # glibc's default count of mmap'd blocks
MMAP_THRESHOLD_LARGEST = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit systems
LARGE_FRACTION = 1 / 64  # of physical memory: a dispatch buffer above it is not kept (module docstring)

_applied = False
_large_returned = False  # fit() handed large blocks back to mmap: for the rest of the process
_mallopt = None


def keep_freed() -> bool:
  """Sets glibc's malloc to keep freed memory (module docstring); returns whether it is set.
  Call it early: allocations made before are returned to the kernel as before."""
  global _applied
  if _applied or _large_returned:
    return _applied
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = _glibc_mallopt()
  _applied = mallopt is not None and all(mallopt(param, value) == 1 for param, value in
                                         ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER)))
  return _applied


def fit(buffer_bytes: int) -> bool:
  """Whether blocks above 32 MiB stay kept, given a dispatch's buffer of `buffer_bytes`: once
  one exceeds `LARGE_FRACTION` of physical memory they go back to mmap, for the rest of the
  process (module docstring). Nothing to do where `keep_freed` was not applied."""
  global _applied, _large_returned
  if _applied and buffer_bytes > LARGE_FRACTION * physical_memory():
    mallopt = _glibc_mallopt()
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_LARGEST)
    mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)
    _applied, _large_returned = False, True
  return _applied


HUGE_PAGES = "glibc.malloc.hugetlb"  # glibc's tunable: 1 madvises its heap and mmap'd blocks into huge pages
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def use_huge_pages() -> bool:
  """Re-executes this program with glibc's huge-page tunable set, unless it is set already or
  cannot act (module docstring); returns whether the tunable is on. Call it before anything
  else: the program starts again from the beginning."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if HUGE_PAGES in tunables or not _huge_pages_possible():
    return huge_pages()
  os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, f"{HUGE_PAGES}=1")))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
  return True  # not reached


def huge_pages() -> bool:
  """Whether this process started with glibc's huge-page tunable on."""
  return f"{HUGE_PAGES}=1" in os.environ.get("GLIBC_TUNABLES", "").split(":")


def _huge_pages_possible() -> bool:
  libc, version = platform.libc_ver()
  if platform.system() != "Linux" or libc != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 35):
    return False
  try:
    with open(THP_ENABLED) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def physical_memory() -> int:
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def applied() -> bool:
  """Whether freed blocks of every size are kept (`keep_freed`, and no `fit` undid it)."""
  return _applied


def _glibc_mallopt():
  global _mallopt
  if _mallopt is None:
    try:
      _mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
      return None
    _mallopt.argtypes, _mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return _mallopt
