"""Message chaos in a real run: `declora simulate --chaos` (drop, delay with jitter, duplication, reordering on
every ZeroMQ link, control messages included) with real peer processes and tiny BERT finishes every round, never
counts a neighbour twice, and the chaos counters each peer logs at its close show that chaos acted."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from .test_simulate import classification_args, ok, simulate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHAOS = "drop=0.05,delay=30ms,jitter=60ms,dup=0.1,reorder=0.1,hold=200ms"


def rows(out, peer):
    return [json.loads(x) for x in (out / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines() if x.strip()]


def logged_counters(out, peer) -> tuple[dict, dict]:
    """The chaos counters and the receive-side drops a peer logged when it said BYE."""
    text = (out / "logs" / f"peer-{peer}.log").read_text()
    found = re.search(r"chaos: (\{.*\}); receive drops: (\{.*\})", text)
    assert found, f"peer {peer} logged no chaos counters:\n{text[-2000:]}"
    return json.loads(found.group(1)), json.loads(found.group(2))


def test_a_run_under_message_chaos_finishes_every_round_and_counts_no_neighbour_twice(tmp_path):
    rounds = 8
    proc, out = simulate(tmp_path, *classification_args(tmp_path), "--peers", "3", "--topology", "complete:3",
                         "--rounds", str(rounds), "--local-steps", "1", "--eval-every", "100", "--fault-tolerant",
                         "--deadline-s", "3", "--heartbeat-s", "0.25", "--missed-heartbeats", "8", "--chaos", CHAOS)
    ok(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == rounds
    acted, receive_drops = Counter(), Counter()
    for i in range(3):
        records = rows(out, i)
        assert [r["round"] for r in records] == list(range(rounds))
        assert all(r["neighbours_heard"] <= r["neighbours"] == 2 for r in records)
        assert all(len(set(r["neighbours_missing"])) == len(r["neighbours_missing"]) for r in records)
        assert sum(r["neighbours_heard"] for r in records) >= rounds  # lossy, not dead
        chaos, drops = logged_counters(out, i)
        acted.update({k: v for k, v in chaos.items() if isinstance(v, int)})
        receive_drops.update(drops)
    for what in ("dropped", "delayed", "duplicated", "reordered"):
        assert acted[what] > 0, (what, acted)
    assert acted["cut"] == 0
    # The receivers dropped what chaos duplicated (round messages as duplicates or old rounds; a second PING is
    # answered twice, harmless) and late messages that a newer one made moot (superseded); nothing was malformed.
    assert set(receive_drops) <= {"duplicate", "old_round", "future_round", "evicted", "state_request_flood",
                                  "superseded"}
