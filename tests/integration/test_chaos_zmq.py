"""The chaos layer on the ZeroMQ transport: two real ZmqTransports on loopback in one process. A cut loses
heartbeats too (the neighbour goes down, and comes back when the cut heals); duplicated and delayed round messages
arrive once; a close discards what is still held back and stops the timer."""
from __future__ import annotations

import time

import pytest

from declora.wire import chaos
from declora.wire.chaos import parse
from declora.wire.protocol import Kind

from .test_io_thread import message, pair

pytestmark = pytest.mark.timeout(60)


def started(spec_a="", spec_b="", cut=""):
    a, b = pair()
    chaos.attach(a, parse(spec_a, cut), seed=1)
    chaos.attach(b, parse(spec_b, cut), seed=1)
    a.start()
    b.start()
    assert not a.wait_for_neighbours(10) and not b.wait_for_neighbours(10)
    return a, b


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    return cond()


def test_a_cut_loses_heartbeats_and_the_link_comes_back_when_it_heals():
    a, b = started(cut="1@3:5")  # peer 1 cut off during its rounds 3 and 4
    try:
        b.set_round(3)
        assert wait_for(lambda: a.counters()["went_down"].get(1) == 1)  # its PINGs and PONGs are lost: down
        assert 1 not in a.live_neighbours()
        b.set_round(5)
        assert wait_for(lambda: 1 in a.live_neighbours())  # healed
        by_kind = b.counters()["chaos"]["by_kind"]
        assert by_kind.get("ping", {}).get("cut", 0) + by_kind.get("pong", {}).get("cut", 0) > 0
        assert b.send(0, message(1, 5))
        assert list(a.collect(5, Kind.FACTORS, {1}, 5.0).received) == [1]
    finally:
        a.close()
        b.close()


def test_duplicated_and_delayed_round_messages_arrive_once():
    a, b = started(spec_b="dup=1,delay=50ms,jitter=50ms")
    try:
        for t in range(3):
            assert b.send(0, message(1, t))
            res = a.collect(t, Kind.FACTORS, {1}, 5.0)
            assert list(res.received) == [1] and res.received[1].round == t
        assert wait_for(lambda: sum(a.counters()["dropped"].get(k, 0) for k in ("duplicate", "old_round")) == 3)
        assert b.counters()["chaos"]["by_kind"]["factors"] == {"delayed": 6, "duplicated": 3}
    finally:
        a.close()
        b.close()


def test_close_discards_what_is_held_back_and_stops_the_timer():
    a, b = started(spec_b="1>0:delay=2")
    try:
        heard = a.counters()["received"][1].get("messages", 0)
        assert b.send(0, message(1, 0))
        timer = b.chaos._thread
        b.close()
        time.sleep(2.5)
        assert not timer.is_alive()
        # The BYE came through at once (it is spared random chaos), the delayed round message never. Heartbeats and
        # HELLO replies count as messages too and may still be on their way, so the count is a lower bound only.
        assert a.counters()["received"][1]["messages"] >= heard + 1
        assert not a.collect(0, Kind.FACTORS, {1}, 0.1).received
        assert b.counters()["chaos"]["discarded_at_close"] >= 1
    finally:
        a.close()
        b.close()
