"""Peers launched by a real SLURM: a one-node cluster brought up on this machine (scripts/slurm_local.sh: munged,
slurmctld and slurmd on localhost, as root), `srun -n 4 declora worker`, then torn down. Skips, saying why, where
the cluster cannot start (not root, slurm-wlm or munge not installed)."""
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
SCRIPT = REPO / "scripts" / "slurm_local.sh"


@pytest.fixture
def slurm_cluster(tmp_path):
    folder = tmp_path / "slurm"
    up = subprocess.run(["bash", str(SCRIPT), "up", str(folder)], capture_output=True, text=True, timeout=120)
    if up.returncode == 3:
        pytest.skip(f"no one-node SLURM here: {up.stderr.strip()}")
    assert up.returncode == 0, up.stderr
    try:
        yield folder / "slurm.conf"
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(folder)], capture_output=True, timeout=60)


def test_srun_starts_four_peers_that_find_each_other(tmp_path, slurm_cluster):
    train, dev = sst2_slice(tmp_path, n_train=200, n_dev=32)
    env = {**os.environ, "SLURM_CONF": str(slurm_cluster), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "DECLORA_STORE_PORT": str(free_loopback_ports(1)[0])}
    out = tmp_path / "run"
    cmd = ["srun", "-n", "4", "--export=ALL", sys.executable, "-m", "declora.worker", "--model", "tiny-bert",
           "--data", str(train), "--eval-data", str(dev), "--rounds", "3", "--local-steps", "1", "--batch-size", "8",
           "--max-length", "32", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    for rank in range(4):
        assert f"peer {rank} of 4 (slurm)" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["peers"] == 4 and summary["rounds_completed"] == 3
    assert "rounds heard in full" in proc.stdout
