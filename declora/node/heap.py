"""The C heap of a peer process (glibc malloc): bounded at start, given back to the OS after the big one-off frees.

Measured on a MiniLM peer (benchmarks/bench_memory.py, benchmarks/README.md "Memory of a peer process"): with glibc's
defaults a peer peaks some 350 MB above what it holds live. glibc raises its mmap threshold to the size of every
mmapped block it frees (up to 32 MB), so after the first training step the activations (1-25 MB tensors) come from
the heap, where freed blocks stay resident and fragment, and the heap's peak grows round after round. A fixed
threshold keeps them in mmapped blocks that go back to the OS when freed. Tokenizing the data and evaluating leave
a hundred MB or so of small freed blocks that only `malloc_trim` returns. Numbers are unchanged: only where memory
comes from. Elsewhere than glibc (musl, macOS) both calls are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("declora.node.heap")

MMAP_THRESHOLD = 1 << 20  # blocks from 1 MB up are mmapped (activations, batches); fixed, so never raised
ARENA_MAX = 2  # ZeroMQ's I/O threads would otherwise each get an arena of their own
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def bound_heap() -> None:
    """At process start: a fixed mmap threshold and at most ARENA_MAX arenas."""
    if _LIBC is None:
        return
    if not (_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _LIBC.mallopt(_M_ARENA_MAX, ARENA_MAX)):
        log.debug("mallopt refused the heap settings; running with glibc's defaults")


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (after tokenizing, after an evaluation)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
