"""Emulated hosts: network namespaces joined by a bridge, private addresses, a tbf cap each way; always removed."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from declora.node import netns

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=f"no emulated hosts: {netns.available()}")

RECEIVER = ("import socket, sys\ns = socket.socket(); s.bind(('0.0.0.0', 5001)); s.listen(); print('ready', flush=True)\n"
            "c, _ = s.accept(); n = 0\nwhile True:\n    b = c.recv(1 << 20)\n    if not b: break\n    n += len(b)\n"
            "print(n, flush=True)")


def namespaces() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            .stdout.splitlines() if line.strip()}


def send(hosts, src: int, dst: int, nbytes: int) -> tuple[int, float]:
    receiver = subprocess.Popen(hosts.exec_prefix(dst) + [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE,
                                text=True)
    assert receiver.stdout.readline().strip() == "ready"
    started = time.monotonic()
    subprocess.run(hosts.exec_prefix(src) + [sys.executable, "-c", f"import socket; s = socket.create_connection(("
                   f"'{hosts.address(dst)}', 5001)); s.sendall(b'x' * {nbytes}); s.close()"], check=True, timeout=120)
    got = int(receiver.communicate(timeout=120)[0].strip())
    return got, time.monotonic() - started


def test_hosts_reach_each_other_over_a_capped_link_and_are_removed():
    before = namespaces()
    with netns.EmulatedHosts(3, rate_mbit=40) as hosts:
        assert len(set(hosts.names) & namespaces()) == 3
        assert len({hosts.address(h) for h in range(3)}) == 3 and hosts.address(0).startswith("10.")
        got, seconds = send(hosts, 0, 2, 10_000_000)
        assert got == 10_000_000
        # 80 Mbit through a 40 Mbit/s cap takes 2 s at the least; an uncapped veth would take a fraction of that.
        assert seconds >= 1.6, f"10 MB in {seconds:.2f} s: the cap is not in force"
    assert namespaces() == before  # every namespace (and with it every link) is gone


def test_uncapped_hosts_and_stale_namespaces():
    with netns.EmulatedHosts(2) as hosts:
        got, seconds = send(hosts, 1, 0, 10_000_000)
        assert got == 10_000_000 and seconds < 30
    stale = f"{netns.PREFIX}999999-h0"  # a run whose launcher was killed (no process 999999)
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in netns.remove_stale()
    assert stale not in namespaces()
