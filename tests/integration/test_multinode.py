"""Multi-node launching on one host: two `declora launch-node` "nodes" (torchrun-style variables), and single
`declora peer` processes started by hand from an address book, as a user would across machines."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_simulate import REPO, sst2_slice

pytestmark = pytest.mark.slow


def free_port_block(n: int) -> int:
    """A base port with n consecutive free ports on loopback."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


def run_args(tmp_path: Path, out: Path) -> list[str]:
    train, dev = sst2_slice(tmp_path)
    return ["--model", "tiny-bert", "--data", str(train), "--eval-data", str(dev), "--batch-size", "8",
            "--max-length", "32", "--local-steps", "2", "--rounds", "2", "--peers", "4", "--threads", "1",
            "--out", str(out)]


def records(out: Path, peer: int) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()]


def test_two_nodes_with_torchrun_variables(tmp_path):
    out = tmp_path / "run"
    base = free_port_block(4)
    args = run_args(tmp_path, out) + ["--hosts", "127.0.0.1,127.0.0.1", "--base-port", str(base)]
    procs = []
    for node in (0, 1):
        env = {**os.environ, "NODE_RANK": str(node), "NNODES": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "declora.cli", "launch-node", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "node 0/2 runs peers [0, 1]" in outputs[0]
    assert "node 1/2 runs peers [2, 3]" in outputs[1]
    for peer in range(4):
        rs = records(out, peer)
        assert [r["round"] for r in rs] == [0, 1]
        assert all(r["neighbours_heard"] == 2 for r in rs)  # ring:4 links peers across the two nodes


def test_peers_started_by_hand_from_a_topology_file(tmp_path):
    """`declora peer --peer-id I` with the addresses in the topology file, the way a multi-machine run starts."""
    out = tmp_path / "run"
    base = free_port_block(3)
    topo = tmp_path / "triangle.toml"
    ranks = [4, 2, 2]  # from the file's nodes: the config gives no --ranks
    topo.write_text("nodes = [\n" + "".join(f'  {{ id = {i}, host = "127.0.0.1", port = {base + i}, rank = {r} }},\n'
                                           for i, r in enumerate(ranks)) + "]\nedges = [[0, 1], [1, 2], [0, 2]]\n")
    args = run_args(tmp_path, out)
    args[args.index("--peers") + 1] = "3"
    config = tmp_path / "run.toml"
    config.write_text(f'topology = "{topo}"\nmode = "svd"\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "declora.cli", "peer", "--config", str(config),
                               "--peer-id", str(i), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    for peer in range(3):
        assert [r["neighbours_heard"] for r in records(out, peer)] == [2, 2]
        log = "".join(f.read_text() for f in (out / "logs").glob(f"peer-{peer}*")) + outputs[peer]
        assert f"rank {ranks[peer]}," in log, log[-2000:]
