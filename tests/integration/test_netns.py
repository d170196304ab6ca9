"""Emulated hosts: network namespaces joined by a bridge, private addresses, a tbf cap each way; always removed."""
from __future__ import annotations

import json
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


def test_simulate_spreads_peers_over_emulated_hosts_with_capped_links(tmp_path):
    from tests.integration.test_simulate import classification_args, ok, simulate

    before = namespaces()
    proc, out = simulate(tmp_path, *classification_args(tmp_path), "--peers", "3", "--hosts", "netns:3",
                         "--host-mbit", "100")
    ok(proc)
    assert "on 3 emulated hosts at 100 Mbit/s" in proc.stdout and "CURVE" in proc.stdout
    book = json.loads((out / "addresses.json").read_text())
    hosts = {endpoint.split("//")[1].rsplit(":", 1)[0] for endpoint in book.values()}
    assert len(hosts) == 3 and all(h.startswith("10.") for h in hosts)  # one private address per host
    for i in range(3):
        log = (out / "logs" / f"peer-{i}.log").read_text()
        assert "(CURVE)" in log  # not loopback: the run's own keys
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 2
    records = [json.loads(line) for line in (out / "metrics" / "peer-0.jsonl").read_text().splitlines()]
    assert [r["neighbours_heard"] for r in records] == [2, 2]  # both neighbours, each on another host
    assert namespaces() == before


def test_emulated_hosts_need_simulate_and_a_valid_count(tmp_path):
    from tests.integration.test_simulate import simulate

    proc, _ = simulate(tmp_path, "--peers", "2", "--hosts", "netns:0")
    assert proc.returncode == 2 and "netns:K needs K in 1..200" in proc.stderr
    proc, _ = simulate(tmp_path, "--peers", "2", "--host-mbit", "10")
    assert proc.returncode == 2 and "add --hosts netns:K" in proc.stderr
