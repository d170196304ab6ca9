"""node.heap: with the fixed mmap threshold (an option), blocks of a training step's size go back to the OS when freed (with
glibc's raised threshold they stay resident); trim_heap returns the small blocks' pages. Own processes: the test
runner's heap would blur the figures."""
from __future__ import annotations

import subprocess
import sys

import pytest

from declora.node import heap

PROBE = r"""
import sys
from declora.node.heap import bound_heap, trim_heap
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) / 1024
if sys.argv[1] == "bounded":
    bound_heap(fixed_mmap_threshold=True)
# glibc raises its threshold to the size of a freed mmapped block: after this, 2 MB blocks come from the heap.
big = bytearray(8 << 20); del big
before = rss_mb()
held = [bytearray(2 << 20) for _ in range(64)]  # 128 MB in 2 MB blocks (touched: bytearray zero-fills)
small = [bytearray(100) for _ in range(200_000)]  # 20 MB of small blocks
held.pop(-1)  # the heap's top block gone: only trimming could return the rest
del small
trim_heap()
held = [b for i, b in enumerate(held) if i % 2]  # every other block freed, the top one kept
print(rss_mb() - before)
"""


@pytest.mark.skipif(heap._LIBC is None, reason="not glibc")
def test_freed_blocks_go_back_to_the_os_with_the_fixed_threshold():
    grown = {mode: float(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                                        check=True).stdout) for mode in ("bounded", "default")}
    # 31 blocks of 2 MB are held at the end: about 62 MB
    assert grown["bounded"] < 80, grown
    assert grown["default"] > grown["bounded"] + 40, grown


def test_the_calls_are_safe_anywhere():
    heap.bound_heap()
    heap.bound_heap(fixed_mmap_threshold=True)
    heap.trim_heap()
