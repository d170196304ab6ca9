"""`declora simulate --peers-per-process M`: several peers per OS process sharing one frozen base give bit for bit the
adapters of one process per peer, over real ZeroMQ between every peer."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_simulate import classification_args, ok, simulate

pytestmark = pytest.mark.slow


def test_two_peers_per_process_match_one_per_process_bit_for_bit(tmp_path):
    runs = {}
    for per_process in (1, 2):
        proc, out = simulate(tmp_path, *classification_args(tmp_path), "--peers", "4", "--peers-per-process",
                             str(per_process), name=f"ppp{per_process}")
        ok(proc)
        runs[per_process] = out
    assert sorted(p.name for p in (runs[2] / "logs").iterdir()) == ["peers-0-1.log", "peers-2-3.log"]
    assert "share one frozen base" in (runs[2] / "logs" / "peers-0-1.log").read_text()
    for peer in range(4):
        one = load_file(runs[1] / "adapters" / f"peer-{peer}" / "adapter_model.safetensors")
        two = load_file(runs[2] / "adapters" / f"peer-{peer}" / "adapter_model.safetensors")
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
        records = [[json.loads(line) for line in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()]
                   for out in (runs[1], runs[2])]
        assert [r["eval_accuracy"] for r in records[0]] == [r["eval_accuracy"] for r in records[1]]


def test_modes_that_merge_into_the_base_are_refused(tmp_path):
    proc, _ = simulate(tmp_path, "--peers", "4", "--mode", "stack", "--peers-per-process", "2")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "merges each peer's deltas into its base" in proc.stderr
