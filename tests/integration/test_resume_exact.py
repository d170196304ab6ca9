"""Resume is exact: a run stopped after round 1 and resumed from its checkpoints ends with the same bits as a run
that never stopped (the golden hashes). Checks the checkpoint holds everything that matters: adapter, optimizer,
data position, each learner's random stream, error-feedback residuals, the stochastic-rounding generator, and in
stack mode the base weights the deltas were merged into. Centralized training is a peer that is alone, so it resumes too."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.golden.scenarios import ROUNDS, check_complete, collect, compare, load_golden, scenario_config, write_data

GOLDEN = load_golden()


def forget_last_round(out: Path) -> None:
    """What a kill between round 1's checkpoint and round 2's leaves on disk."""
    for ckpt in (out / "checkpoints").glob(f"peer-*/round-{ROUNDS - 1}.pt"):
        ckpt.unlink()


# Stack mode resumes exactly because its checkpoint holds the merged base weights themselves: re-adding the summed
# delta to the pretrained weights in one go would round differently from the live run's round-by-round additions.
@pytest.mark.parametrize("name", ["centralized", "stack-fp16", "svd-int4-ef-sr-mixed", "gossip-int8"])
def test_resumed_run_matches_an_unbroken_one(name, tmp_path):
    from declora.config import resolve
    from declora.node.inprocess import run_in_process

    out = tmp_path / name
    cfg = resolve(**scenario_config(name, write_data(tmp_path / "data"), out))
    run_in_process(cfg)
    forget_last_round(out)
    run_in_process(dataclasses.replace(cfg, resume=True))
    records = collect(out, name)
    assert not check_complete(name, records)
    assert all([r["round"] for r in rows] == list(range(ROUNDS)) for rows in records.values() if isinstance(rows, list))
    diffs = compare(name, GOLDEN[name], records)
    assert not diffs, "\n".join(diffs[:10])
