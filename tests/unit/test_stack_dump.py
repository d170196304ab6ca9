"""SIGUSR1 makes a declora process print where it is, and it goes on running."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

SCRIPT = """
import sys, time
from declora.node.stack_dump import dump_stacks_on_sigusr1
dump_stacks_on_sigusr1()
def waiting_for_peers():
    print("ready", flush=True)
    time.sleep(3)
waiting_for_peers()
print("still alive", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_prints_the_stack_and_the_process_carries_on():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "still alive" in out
    assert "in waiting_for_peers" in err
