"""Peers launched by a real `torchrun`: two invocations (two "nodes" of two workers each) meet through c10d
rendezvous, find each other's endpoints and CURVE keys in torchrun's own store, train, and rank 0 writes the run's
summary. No address book, no host list, no key files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from declora.node import netns
from declora.node.addressbook import free_loopback_ports
from tests.integration.test_simulate import sst2_slice

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def run_two_nodes(tmp_path: Path, endpoint: str, prefix=lambda node: [], extra=lambda node: []) -> tuple[dict, str]:
    """Two torchrun invocations of two workers each; (rank 0's summary, both outputs)."""
    train, dev = sst2_slice(tmp_path, n_train=200, n_dev=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = []
    for node in range(2):
        cmd = [*prefix(node), *TORCHRUN, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", endpoint, "--rdzv-id", "declora-test", *extra(node), "-m", "declora.worker",
               "--model", "tiny-bert", "--data", str(train), "--eval-data", str(dev), "--rounds", "3",
               "--local-steps", "1", "--batch-size", "8", "--max-length", "32", "--threads", "1",
               "--topology", "ring", "--out", str(tmp_path / f"node{node}")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      cwd=REPO))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    # Which invocation got rank 0 is up to the rendezvous; that node holds the summary of all four peers.
    summaries = [tmp_path / f"node{n}" / "summary.json" for n in range(2) if (tmp_path / f"node{n}" / "summary.json").exists()]
    assert len(summaries) == 1, outputs
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "ok" and summary["peers"] == 4 and summary["rounds_completed"] == 3
    records = [json.loads(line) for line in (summaries[0].parent / "metrics" / "peer-3.jsonl").read_text().splitlines()]
    assert [r["neighbours_heard"] for r in records] == [2, 2, 2]  # ring of 4: each round heard both neighbours
    return summary, "\n".join(outputs)


def test_two_torchrun_nodes_discover_each_other_and_train(tmp_path):
    _, log = run_two_nodes(tmp_path, f"127.0.0.1:{free_loopback_ports(1)[0]}")
    for rank in range(4):
        assert f"peer {rank} of 4 (torchrun)" in log
        assert f"peer {rank} listening on tcp://127.0.0.1:" in log and "(CURVE)" in log


@pytest.mark.skipif(netns.available() is not None, reason=f"no emulated hosts: {netns.available()}")
def test_two_torchrun_nodes_on_two_emulated_hosts(tmp_path):
    """Each torchrun on a host of its own (a network namespace with a private address): the peers' endpoints are
    the hosts' addresses, not loopback. All emulated hosts share one hostname, which resolves to loopback, so each
    node names its own address with torchrun's --local-addr (as on a real multi-homed host), and the first hosts the
    c10d store (is_host=1: its address is on no interface torchrun looks at by name)."""
    with netns.EmulatedHosts(2, rate_mbit=1000) as hosts:
        _, log = run_two_nodes(tmp_path, f"{hosts.address(0)}:29400", prefix=hosts.exec_prefix,
                               extra=lambda node: ["--rdzv-conf", f"is_host={int(node == 0)}",
                                                   "--local-addr", hosts.address(node)])
        for rank in range(4):
            node = 0 if f"peer {rank} of 4 (torchrun) at tcp://{hosts.address(0)}:" in log else 1
            assert f"peer {rank} of 4 (torchrun) at tcp://{hosts.address(node)}:" in log
        assert "(CURVE)" in log and "127.0.0.1" not in log.split("listening on")[1].split("\n")[0]


def test_worker_outside_a_launcher_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "MASTER_", "SLURM_", "TORCHELASTIC"))}
    proc = subprocess.run([sys.executable, "-m", "declora.cli", "worker", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "torchrun or srun" in proc.stderr
    env.update(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    proc = subprocess.run([sys.executable, "-m", "declora.worker", "--peers", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--peers 3 but the launcher started 2 workers" in proc.stderr
