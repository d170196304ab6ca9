"""The launcher's bookkeeping of dead processes (declora.launch_faults): restart policy and back-off, the summary's
deaths and returns, the parts of a gossip graph split by peers dead for good, and where --resume starts. The
processes themselves are in tests/integration/test_restart.py."""
from __future__ import annotations

import io
import json
import time

import pytest

from declora import launch_faults
from declora.config import ConfigError, RunConfig
from declora.launch_faults import Faults, check_restart, exit_text, resume_point, split_graph


def cfg(**kw) -> RunConfig:
    return RunConfig(**{"peers": 4, "topology": "ring", "model": "tiny-bert", **kw})


def test_exit_text():
    assert exit_text(-9) == "killed by SIGKILL" and exit_text(1) == "exit code 1" and exit_text(-200).endswith("200")


def test_split_graph():
    assert split_graph(cfg(), {0, 2}) == [[1], [3]]
    assert split_graph(cfg(), {0}) is None  # a path 1-2-3 is still connected
    assert split_graph(cfg(peers=6, topology="ring"), {0, 3}) == [[1, 2], [4, 5]]
    assert split_graph(cfg(server="fedit"), {0, 2}) is None  # no gossip graph
    assert split_graph(cfg(), set()) is None


def test_restart_dead_implies_fault_tolerance_and_needs_a_mode_that_catches_up():
    assert check_restart(cfg(restart_dead=True)).fault_tolerant
    assert not check_restart(cfg()).fault_tolerant
    for bad in ({"mode": "stack"}, {"server": "flora"}, {"mode": "centralized"}, {"max_restarts": -1}):
        with pytest.raises(ConfigError):
            check_restart(cfg(restart_dead=True, **bad))


def metrics(tmp_path, peer: int, records: list[dict]) -> None:
    path = tmp_path / "metrics" / f"peer-{peer}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def checkpoints(tmp_path, peer: int, rounds) -> None:
    folder = tmp_path / "checkpoints" / f"peer-{peer}"
    folder.mkdir(parents=True, exist_ok=True)
    for r in rounds:
        (folder / f"round-{r}.pt").write_bytes(b"")


def test_a_death_is_restarted_up_to_max_restarts_then_stays_dead(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_faults, "RESTART_BACKOFF_S", 0.05)
    c = cfg(restart_dead=True, max_restarts=1)
    faults = Faults(c, tmp_path, {i: [i] for i in range(4)}, time.time())
    metrics(tmp_path, 1, [{"round": r} for r in range(8)])
    checkpoints(tmp_path, 1, [6, 7])
    lines = faults.died(1, -9, others_running=True)
    assert lines[0].startswith("declora: peer 1 died (killed by SIGKILL") and "last round in its metrics 8" in lines[0]
    assert "restarting peer 1 in 0 s (restart 1 of 1)" in lines[1]
    assert faults.due() == [] or faults.due() == [1]
    time.sleep(0.1)
    assert faults.due() == [1]
    assert "peer 1 after round 8" in faults.restarted(1) and faults.pending == {}
    # It came back at round 8, caught up to round 30, then died again: no more restarts.
    metrics(tmp_path, 1, [{"round": r} for r in range(8)] + [{"round": 30, "caught_up_from_round": 8},
                                                             {"round": 31}])
    lines = faults.died(1, 1, others_running=True)
    assert "exit code 1" in lines[0] and "not restarting peer 1: it was restarted 1 times" in lines[1]
    assert faults.died(3, -15, others_running=False)[-1].startswith("declora: warning: the peers dead for good (1, 3)")
    summary = faults.summary({1: [{"round": r} for r in range(8)] + [{"round": 30, "caught_up_from_round": 8}]})
    assert [(d["peer"], d["last_round"], d["signal"], d["exit_code"]) for d in summary["deaths"]] == \
        [(1, 7, "SIGKILL", None), (1, 31, None, 1), (3, None, "SIGTERM", None)]
    assert [(r["peer"], r["resumed_at_round"], r["caught_up_to_round"]) for r in summary["returns"]] == [(1, 8, 30)]
    assert summary["dead_for_good"] == [1, 3] and summary["graph_parts"] == [[0], [2]]


def test_no_restart_when_nothing_is_left_to_catch_up_with_nor_after_the_run(tmp_path):
    faults = Faults(cfg(restart_dead=True), tmp_path, {0: [0, 1], 2: [2, 3]}, time.time())
    lines = faults.died(0, -9, others_running=False)
    assert "declora: process of peers 0-1 died" in lines[0] and "no other process is running" in lines[1]
    faults.died(2, -9, others_running=True)
    assert faults.pending and faults.give_up() == [] and not faults.pending and faults.dead == {0, 2}


def test_resume_point(tmp_path):
    out = io.StringIO()
    assert resume_point(cfg(peers=2), tmp_path, [0, 1], out) == (None, False)  # nothing saved: a fresh start
    checkpoints(tmp_path, 0, [7, 8])
    checkpoints(tmp_path, 1, [3, 4])
    assert resume_point(cfg(peers=2), tmp_path, [0, 1], out) == (None, True)  # each from its own latest
    assert "no checkpoint round in common (peer 0: 7,8; peer 1: 3,4)" in out.getvalue()
    with pytest.raises(ConfigError, match="with --mode stack a peer cannot catch up"):
        resume_point(cfg(peers=2, mode="stack"), tmp_path, [0, 1], out)
    checkpoints(tmp_path, 1, [7])
    assert resume_point(cfg(peers=2, mode="stack"), tmp_path, [0, 1], out) == (7, False)  # the common round wins
