"""The launcher's side of issue 10's faults, with real peer processes on loopback and tiny BERT:

- `simulate --restart-dead`: a SIGKILLed peer is restarted with --resume, catches up through its neighbours' state,
  finishes every round, and summary.json records its death and its return;
- `simulate --resume` on a run folder whose peers hold no checkpoint round in common: each peer resumes from its own
  latest checkpoint, and no metrics or newer checkpoints are lost;
- peers that stay dead and split the gossip graph: a warning, and the parts in summary.json.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .test_simulate import REPO, classification_args, wait_for_round

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# Short deadlines and quick liveness, so that a dead peer costs a second, not the default five minutes.
QUICK = ["--local-steps", "1", "--eval-every", "1000", "--deadline-s", "5", "--heartbeat-s", "0.25",
         "--missed-heartbeats", "4", "--start-timeout-s", "60"]


def rows(out: Path, peer: int) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines() if x.strip()]


def launcher(out: Path, flags: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)


def pid_of(out: Path, process: int) -> int:
    return json.loads((out / "processes.json").read_text())[str(process)]


def kill_after_round(out: Path, peer: int, round_: int) -> tuple[int, int]:
    """SIGKILL the process of `peer` once it has finished `round_` (its pid from DIR/processes.json, which the
    launcher writes); return the last round in its metrics and the pid."""
    wait_for_round(out, peer=peer, round_=round_, timeout=180)
    pid = pid_of(out, peer)
    os.kill(pid, signal.SIGKILL)
    return max(r["round"] for r in rows(out, peer)), pid


def test_a_killed_peer_is_restarted_catches_up_and_finishes(tmp_path):
    rounds = 300  # tiny rounds take 50-200 ms: the others must still be running when the restarted peer is up
    out = tmp_path / "run"
    proc = launcher(out, [*classification_args(tmp_path), "--peers", "3", "--topology", "complete:3", "--rounds",
                          str(rounds), *QUICK, "--restart-dead"])
    try:
        killed_after, killed_pid = kill_after_round(out, peer=1, round_=10)
        output, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "peer 1 died (killed by SIGKILL" in output and "restarting peer 1 in 1 s (restart 1 of 3)" in output
    assert "restarted peer 1" in output
    assert pid_of(out, 1) != killed_pid  # processes.json follows the restart

    peer1 = rows(out, 1)
    assert peer1[-1]["round"] == rounds - 1  # it finished every round
    joined = next(r for r in peer1 if "caught_up_from_round" in r)
    resumed_at = joined["caught_up_from_round"]
    assert resumed_at in (killed_after, killed_after + 1)  # its own latest checkpoint, not round 0
    assert joined["round"] > resumed_at + 2  # it took a neighbour's state instead of replaying
    # Its metrics go on: every round before the one it resumed at is still there, once.
    before = [r["round"] for r in peer1 if r["round"] < resumed_at]
    assert before == list(range(resumed_at))
    for j in (0, 2):
        assert rows(out, j)[-1]["round"] == rounds - 1

    faults = json.loads((out / "summary.json").read_text())["faults"]
    death = [d for d in faults["deaths"] if d["peer"] == 1]
    assert len(death) == 1 and death[0]["signal"] == "SIGKILL" and death[0]["exit_code"] is None
    assert death[0]["last_round"] == killed_after and death[0]["at_s"] > 0
    back = [r for r in faults["returns"] if r["peer"] == 1]
    assert len(back) == 1 and back[0]["restart"] == 1 and back[0]["at_s"] >= death[0]["at_s"]
    assert back[0]["resumed_at_round"] == resumed_at and back[0]["caught_up_to_round"] == joined["round"]
    assert faults["dead_for_good"] == [] and faults["graph_parts"] is None


def test_resume_without_a_common_round_resumes_each_peer_from_its_own(tmp_path):
    """Peer 0 holds only the checkpoint of round 1, peers 1 and 2 only that of round 5 (as after a kill with
    --keep-checkpoints 1 and peer 0 stuck): no round in common. Resume: no error, every peer finishes, no metrics
    before a peer's checkpoint are lost, and no stale checkpoint survives beside the new ones."""
    out = tmp_path / "run"
    flags = [*classification_args(tmp_path), "--peers", "3", "--topology", "complete:3", *QUICK]
    first = launcher(out, [*flags, "--rounds", "6", "--keep-checkpoints", "0"])
    output, _ = first.communicate(timeout=240)
    assert first.returncode == 0, output
    for peer, keep in ((0, 1), (1, 5), (2, 5)):
        for path in (out / "checkpoints" / f"peer-{peer}").glob("round-*.pt"):
            if path.name != f"round-{keep}.pt":
                path.unlink()

    again = launcher(out, [*flags, "--rounds", "14", "--keep-checkpoints", "2", "--resume"])
    output, _ = again.communicate(timeout=240)
    assert again.returncode == 0, output
    assert "no checkpoint round in common (peer 0: 1; peer 1: 5; peer 2: 5)" in output
    for peer, kept in ((0, 1), (1, 5), (2, 5)):
        records = rows(out, peer)
        assert [r["round"] for r in records if r["round"] <= kept] == list(range(kept + 1)), peer  # not cut
        assert records[-1]["round"] == 13
        assert sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints" / f"peer-{peer}").glob("round-*.pt")) \
            == [12, 13]
    for peer in (1, 2):  # they went on from round 6, once each
        assert [r["round"] for r in rows(out, peer)] == list(range(14))
    after = rows(out, 0)[2]  # peer 0's first record after its checkpoint of round 1: it caught up from there
    assert after.get("caught_up_from_round") == 2 and after["round"] > 2


def test_peers_dead_for_good_that_split_the_graph_are_reported(tmp_path):
    """ring:4 without restarts: peers 0 and 2 are killed; 1 and 3 are left with no live neighbour."""
    rounds = 100
    out = tmp_path / "run"
    proc = launcher(out, [*classification_args(tmp_path), "--peers", "4", "--topology", "ring:4", "--rounds",
                          str(rounds), *QUICK, "--fault-tolerant"])
    try:
        kill_after_round(out, peer=0, round_=5)
        kill_after_round(out, peer=2, round_=5)
        output, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "warning: the peers dead for good (0, 2) split the gossip graph into 2 parts: 1 | 3" in output
    assert "finished without 2 dead process(es)" in output
    summary = json.loads((out / "summary.json").read_text())
    faults = summary["faults"]
    assert faults["graph_parts"] == [[1], [3]] and faults["dead_for_good"] == [0, 2]
    assert sorted(d["peer"] for d in faults["deaths"]) == [0, 2] and faults["returns"] == []
    for j in (1, 3):
        assert rows(out, j)[-1]["round"] == rounds - 1
