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

from declora.node.addressbook import free_loopback_ports
from tests.integration.test_simulate import sst2_slice

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def test_two_torchrun_nodes_discover_each_other_and_train(tmp_path):
    train, dev = sst2_slice(tmp_path, n_train=200, n_dev=32)
    port = free_loopback_ports(1)[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = []
    for node in range(2):
        cmd = [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "declora-test", "-m", "declora.worker",
               "--model", "tiny-bert", "--data", str(train), "--eval-data", str(dev), "--rounds", "3",
               "--local-steps", "1", "--batch-size", "8", "--max-length", "32", "--threads", "1",
               "--topology", "ring", "--out", str(tmp_path / f"node{node}")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      cwd=REPO))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    # Which invocation got rank 0 is up to the rendezvous; that node holds the summary of all four peers.
    summaries = [tmp_path / f"node{n}" / "summary.json" for n in range(2) if (tmp_path / f"node{n}" / "summary.json").exists()]
    assert len(summaries) == 1, outputs
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "ok" and summary["peers"] == 4 and summary["rounds_completed"] == 3
    log = "\n".join(outputs)
    for rank in range(4):
        assert f"peer {rank} of 4 (torchrun)" in log
        assert f"peer {rank} listening on tcp://127.0.0.1:" in log and "(CURVE)" in log
    records = [json.loads(line) for line in (summaries[0].parent / "metrics" / "peer-3.jsonl").read_text().splitlines()]
    assert [r["neighbours_heard"] for r in records] == [2, 2, 2]  # ring of 4: each round heard both neighbours


def test_worker_outside_a_launcher_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "MASTER_", "SLURM_", "TORCHELASTIC"))}
    proc = subprocess.run([sys.executable, "-m", "declora.cli", "worker", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "torchrun or srun" in proc.stderr
    env.update(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    proc = subprocess.run([sys.executable, "-m", "declora.worker", "--peers", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--peers 3 but the launcher started 2 workers" in proc.stderr
