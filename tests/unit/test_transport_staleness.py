"""Bounded staleness in the round inbox: a message that misses its round's collect is handed out by a later one,
once, within the bound, and never for a neighbour heard on time (InProcTransport: the real frames and inbox)."""
import threading

from declora.wire.inproc import InProcNetwork
from declora.wire.protocol import Kind
from tests.unit.test_transport_inproc import LAYOUT, factors


def pair(stale):
    net = InProcNetwork()
    a = net.transport(0, [1, 2], layout=LAYOUT, max_stale_rounds=stale).start()
    b = net.transport(1, [0], layout=LAYOUT).start()
    c = net.transport(2, [0], layout=LAYOUT).start()
    return a, b, c


def test_a_late_message_is_handed_out_by_the_next_collect():
    a, b, c = pair(stale=2)
    c.send(0, factors(2, 0))
    r0 = a.collect(0, Kind.FACTORS, {1, 2}, deadline_s=0.2)  # b is late
    assert list(r0.received) == [2] and r0.missing == [1] and not r0.late
    b.send(0, factors(1, 0))  # round 0, after a's round 0 is over
    c.send(0, factors(2, 1))
    b.send(0, factors(1, 1))
    r1 = a.collect(1, Kind.FACTORS, {1, 2}, deadline_s=1)
    assert sorted(r1.received) == [1, 2] and not r1.late  # b is on time now: its late round 0 is not mixed too
    assert a.counters()["dropped"] == {"superseded": 1}
    assert a.counters()["late_kept"] == 1


def test_late_is_only_for_who_missed_the_round_and_only_once():
    a, b, c = pair(stale=2)
    a.collect(0, Kind.FACTORS, {1, 2}, deadline_s=0.1)  # both late
    b.send(0, factors(1, 0))
    b.send(0, factors(1, 0))  # a duplicate of a late message
    c.send(0, factors(2, 1))
    r1 = a.collect(1, Kind.FACTORS, {1, 2}, deadline_s=0.1)
    assert list(r1.received) == [2] and list(r1.late) == [1] and r1.late[1].round == 0
    assert a.counters()["dropped"].get("old_round") == 1  # the duplicate: round 0 of peer 1 was handed out
    r2 = a.collect(2, Kind.FACTORS, {1, 2}, deadline_s=0.1)
    assert not r2.late  # handed out once


def test_only_the_newest_late_message_counts_and_the_bound_holds():
    a, b, c = pair(stale=1)
    for t in range(3):
        a.collect(t, Kind.FACTORS, {1, 2}, deadline_s=0.05)
    b.send(0, factors(1, 0))  # 3 rounds late: beyond the bound of 1
    b.send(0, factors(1, 2))  # 1 round late
    b.send(0, factors(1, 1))  # older than the one kept
    r3 = a.collect(3, Kind.FACTORS, {1, 2}, deadline_s=0.05)
    assert list(r3.late) == [1] and r3.late[1].round == 2
    assert a.counters()["dropped"].get("old_round") == 2


def test_without_staleness_late_messages_are_old():
    a, b, c = pair(stale=0)
    a.collect(0, Kind.FACTORS, {1, 2}, deadline_s=0.05)
    b.send(0, factors(1, 0))
    assert not a.collect(1, Kind.FACTORS, {1, 2}, deadline_s=0.05).late
    assert a.counters()["dropped"] == {"old_round": 1}


def test_arrivals_say_how_long_after_the_collect_began_each_message_came():
    a, b, c = pair(stale=0)
    b.send(0, factors(1, 0))  # already there
    threading.Timer(0.3, lambda: c.send(0, factors(2, 0))).start()
    r = a.collect(0, Kind.FACTORS, {1, 2}, deadline_s=5)
    assert r.arrivals[1] == 0.0 and 0.2 < r.arrivals[2] < 2.0
    assert r.awaited == 2


def test_a_quorum_ends_the_wait_after_its_grace():
    a, b, c = pair(stale=2)
    b.send(0, factors(1, 0))  # the quorum (1 of 2) is there; c never sends
    r = a.collect(0, Kind.FACTORS, {1, 2}, deadline_s=30, quorum=(1, 0.3))
    assert list(r.received) == [1] and r.missing == [2] and r.waited_s < 3
