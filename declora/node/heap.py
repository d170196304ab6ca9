"""The C heap of a peer process (glibc malloc): few arenas, and its free pages given back to the OS after tokenizing,
after each evaluation and at the end of each round.

Why (measured in benchmarks/README.md, "Memory of a peer process"): glibc raises its mmap threshold to the size of
every mmapped block it frees, so from the first training step on the activations come from the heap, where freed
blocks stay resident and fragment; tokenizing and evaluating leave many small freed blocks resident. `malloc_trim`
returns those pages. A fixed 1 MB threshold (`bound_heap(fixed_mmap_threshold=True)`, or MALLOC_MMAP_THRESHOLD_=1048576
in the environment) cuts a peer's peak further but costs CPU time on every training step (every activation is a
fresh mmap, faulted in page by page), so it is not the default. A MALLOC_ARENA_MAX in the environment wins over
ARENA_MAX (a process of several peers runs with one arena: launch.group_env). Numbers are unchanged either way: only
where memory comes from. Elsewhere than glibc (musl, macOS) the calls are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

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


def bound_heap(fixed_mmap_threshold: bool = False) -> None:
    """At process start: at most ARENA_MAX arenas; with `fixed_mmap_threshold`, blocks from MMAP_THRESHOLD up always
    mmapped (less memory, more CPU time: see above)."""
    if _LIBC is None:
        return
    ok = "MALLOC_ARENA_MAX" in os.environ or _LIBC.mallopt(_M_ARENA_MAX, ARENA_MAX)
    if fixed_mmap_threshold:
        ok = ok and _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if not ok:
        log.debug("mallopt refused the heap settings; running with glibc's defaults")


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (after tokenizing, after an evaluation, at the end of a round)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
