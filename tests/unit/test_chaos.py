"""The chaos layer (declora.wire.chaos) on real in-process transports: the spec strings, drop, delay, duplication,
reordering and cuts on the send path, what the receive side makes of them (a neighbour is never counted twice in
a round), reproducibility from the seed, and a close that stops the timer with nothing sent after BYE."""
import time

import pytest

from declora.config import ConfigError, RunConfig
from declora.config.checks import validate
from declora.wire import chaos
from declora.wire.chaos import ANY, LinkChaos, parse
from declora.wire.inproc import InProcNetwork
from declora.wire.protocol import Kind

from .test_transport_inproc import LAYOUT, factors, in_parallel


def network(n, edges, spec="", cut="", seed=0):
    """Peers 0..n-1 over `edges`, each with the chaos of (spec, cut), started."""
    net = InProcNetwork()
    nbrs = {i: sorted({b for a, b in edges if a == i} | {a for a, b in edges if b == i}) for i in range(n)}
    peers = [chaos.attach(net.transport(i, nbrs[i], layout=LAYOUT), parse(spec, cut), seed) for i in range(n)]
    for p in peers:
        p.start()
    return net, peers


def received(p, j):
    return p.counters()["received"][j].get("messages", 0)


def exchange_rounds(peers, rounds, deadline_s):
    """Every peer exchanges `rounds` rounds in parallel; returns results[peer][round]."""
    def run(p):
        return [p.exchange(t, factors(p.peer_id, t), deadline_s) for t in range(rounds)]
    return in_parallel([lambda p=p: run(p) for p in peers])


def settle(peers, timeout=3.0):
    """Wait until no peer has chaos still holding messages back."""
    end = time.monotonic() + timeout
    while any(p.chaos.counters()["pending"] for p in peers if p.chaos) and time.monotonic() < end:
        time.sleep(0.02)


# ---- the spec strings ---------------------------------------------------------------------------------------------
def test_spec_for_all_links_with_per_link_overrides():
    s = parse("drop=0.05,delay=200ms,jitter=0.1,dup=0.02,reorder=0.05;0-3:drop=1;2>*:delay=1s", "0,1|2-3@5:10;4@1:2")
    assert s.link(1, 2) == LinkChaos(drop=0.05, delay=0.2, jitter=0.1, dup=0.02, reorder=0.05)
    assert s.link(0, 3).drop == 1 and s.link(3, 0).drop == 1 and s.link(0, 3).delay == 0.2  # the rest inherited
    assert s.link(2, 1).delay == 1 and s.link(1, 2).delay == 0.2  # 2>* is what 2 sends, not what it receives
    assert s.links[1][0] == (2, ANY, True)
    assert [s.cut(0, 2, r) for r in (4, 5, 9, 10)] == [False, True, True, False]  # rounds 5 to 9
    assert s.cut(3, 1, 7) and not s.cut(0, 1, 7) and not s.cut(2, 3, 7)  # only links across the cut
    assert s.cut(4, 0, 1) and s.cut(2, 4, 1) and not s.cut(4, 0, 2)  # one side: cut off from everyone else
    assert s.peer_ids() == {0, 1, 2, 3, 4}
    assert not parse("", "").active() and not parse("drop=0").active() and parse("", "0|1@0:1").active()


@pytest.mark.parametrize("flag,value,says", [
    ("chaos", "drop=2", "drop is a probability in [0, 1], got 2"),
    ("chaos", "lose=0.1", "expected KEY=VALUE with KEY one of drop, delay, jitter, dup, reorder, hold"),
    ("chaos", "delay=-1", "delay is a time in seconds >= 0"),
    ("chaos", "delay=soon", "delay='soon' is not a number"),
    ("chaos", "drop=0.1;0x3:drop=1", "a link is I-J (both ways) or I>J"),
    ("chaos", "drop=0.1;drop=0.2", "a part after the first names its link"),
    ("chaos", "drop=0.1;1-7:drop=1", "peer 7 is not in the run (ids 0..3)"),
    ("cut", "0,1|2,3", "expected SIDE|SIDE@START:STOP"),
    ("cut", "0,1|1,2@5:10", "peers [1] are on both sides"),
    ("cut", "0|1@5:5", "STOP must be after START"),
    ("cut", "0,x|1@1:2", "a side is a comma list of peer ids or ranges"),
    ("cut", "0|9@1:2", "peer 9 is not in the run"),
])
def test_bad_specs_are_one_config_error_line(flag, value, says):
    with pytest.raises(ConfigError) as e:
        validate(RunConfig(peers=4, **{flag: value}))
    assert says in str(e.value) and str(e.value).startswith(f"--{flag} {value!r}: ") and "\n" not in str(e.value)


# ---- what each fault does on the wire --------------------------------------------------------------------------------
def test_a_dropped_link_loses_round_and_control_messages_and_the_sender_does_not_know():
    net, (a, b, c) = network(3, [(0, 1), (1, 2), (0, 2)], spec="0>1:drop=1")
    assert b.hello(0) is None and a.hello(1) is not None  # 0's HELLO (its reply to 1's) was lost; 1's arrived
    results = in_parallel([lambda p=p: p.exchange(0, factors(p.peer_id, 0), deadline_s=0.3) for p in (a, b, c)])
    assert results[1].missing == [0] and sorted(results[1].received) == [2]
    assert results[0].missing == [] and results[2].missing == []
    ca = a.counters()
    assert ca["sent"][1]["messages"] >= 2 and ca.get("send_failed_total") == 0  # to the sender, it left
    assert ca["chaos"]["dropped"] == 2
    assert ca["chaos"]["by_kind"] == {"factors": {"dropped": 1}, "hello": {"dropped": 1}}
    assert "chaos" not in InProcNetwork().transport(5, []).counters()  # no chaos, no chaos counters


def test_duplicates_are_dropped_by_the_receiver_and_nothing_is_lost():
    ring = [(i, (i + 1) % 4) for i in range(4)]
    net, peers = network(4, ring, spec="dup=1", seed=3)
    rounds = 6
    results = exchange_rounds(peers, rounds, deadline_s=3.0)
    for p, per_round in zip(peers, results):
        for t, res in enumerate(per_round):
            assert sorted(res.received) == list(p.neighbours) and res.missing == []
    made = sum(p.counters()["chaos"]["by_kind"]["factors"]["duplicated"] for p in peers)
    assert made == 4 * 2 * rounds  # every round message was sent twice
    # Dropped as a duplicate, or as an old round when the receiver closed the round between the two copies.
    assert sum(p.counters()["dropped"].get("duplicate", 0) + p.counters()["dropped"].get("old_round", 0)
               for p in peers) == made


def test_duplicates_and_reorders_never_count_a_neighbour_twice():
    """With reordering and jitter a neighbour's round t+1 message can overtake its round t one; the receiver then
    stops waiting for round t (that neighbour is past it), so the overtaken message comes late and is dropped as an
    old round. Every copy is mixed at most once, or dropped and counted."""
    ring = [(i, (i + 1) % 4) for i in range(4)]
    net, peers = network(4, ring, spec="dup=1,reorder=0.5,hold=60ms,jitter=20ms", seed=3)
    rounds = 8
    results = exchange_rounds(peers, rounds, deadline_s=3.0)
    heard = 0
    for p, per_round in zip(peers, results):
        for t, res in enumerate(per_round):
            assert set(res.received) <= set(p.neighbours)  # a dict by sender: at most once each
            assert all(m.round == t and m.sender == j for j, m in res.received.items())
            heard += len(res.received)
    settle(peers)
    assert heard >= 4 * 2 * rounds // 2
    chaos_done = [p.counters()["chaos"]["by_kind"]["factors"] for p in peers]
    assert sum(c["duplicated"] for c in chaos_done) == 4 * 2 * rounds and sum(c.get("reordered", 0) for c in
                                                                            chaos_done) > 0
    # Every copy that arrived (two of each message, none lost) was mixed once or dropped and counted.
    dropped = [p.counters()["dropped"] for p in peers]
    assert sum(d.get("duplicate", 0) + d.get("old_round", 0) for d in dropped) == 2 * 4 * 2 * rounds - heard
    assert sum(d.get("duplicate", 0) for d in dropped) > 0


def test_a_held_back_message_follows_the_next_one_on_its_link():
    net, (a, b) = network(2, [(0, 1)])
    chaos.attach(b, parse("reorder=1,hold=5"))  # from here on b holds every message back for up to 5 s
    before = received(a, 1)
    started = time.monotonic()
    assert b.send(0, factors(1, 0))
    assert time.monotonic() - started < 0.05  # the sender is never blocked
    time.sleep(0.1)
    assert received(a, 1) == before  # held back
    b.chaos.spec = parse("")  # the next message leaves at once, and the held one right after it
    assert b.send(0, factors(1, 1))
    assert received(a, 1) == before + 2
    r0, r1 = a.collect(0, Kind.FACTORS, {1}, 1.0), a.collect(1, Kind.FACTORS, {1}, 1.0)
    assert list(r0.received) == [1] == list(r1.received) and r0.waited_s < 0.5  # not the 5 s hold
    assert b.counters()["chaos"]["reordered"] == 1


def test_delay_makes_a_message_genuinely_late():
    net, (a, b) = network(2, [(0, 1)], spec="1>0:delay=0.4")
    settle([b])  # b's HELLO, late as well
    assert b.send(0, factors(1, 0))
    res = a.collect(0, Kind.FACTORS, {1}, deadline_s=0.1)
    assert res.missing == [1]
    heard = received(a, 1)
    time.sleep(0.6)
    assert received(a, 1) == heard + 1  # it did arrive, after its round was over
    assert a.counters()["dropped"].get("old_round") == 1
    assert b.counters()["chaos"]["delayed"] == 2


def test_a_cut_partitions_the_graph_for_its_rounds_then_heals():
    ring = [(i, (i + 1) % 4) for i in range(4)]  # 0-1-2-3-0; the cut 0,1|2,3 takes out 1-2 and 3-0
    net, peers = network(4, ring, cut="0,1|2,3@2:4")
    results = exchange_rounds(peers, 10, deadline_s=0.3)
    same_side = {0: [1], 1: [0], 2: [3], 3: [2]}
    for p, per_round in zip(peers, results):
        heard = [sorted(res.received) for res in per_round]
        assert heard[:4] == [list(p.neighbours)] * 2 + [same_side[p.peer_id]] * 2
        # Healed: a neighbour not heard since round 1 looks behind at first (nobody waits a deadline for it), and
        # within a few rounds everyone is in step again.
        assert all(set(same_side[p.peer_id]) <= set(h) for h in heard[4:]) and heard[-2:] == [list(p.neighbours)] * 2
        assert p.counters()["chaos"]["cut"] == 2  # one neighbour across, rounds 2 and 3


def test_the_fate_of_round_messages_is_reproducible_from_the_seed():
    def heard(seed, pings):
        net, (a, b) = network(2, [(0, 1)], spec="drop=0.3", seed=seed)
        out = []
        for t in range(40):
            if pings:
                b._send_control(0, Kind.PING)  # control traffic draws from its own stream
            b.send(0, factors(1, t))
            out.append(bool(a.collect(t, Kind.FACTORS, {1}, deadline_s=0).received))
        return out

    first = heard(7, pings=False)
    assert first == heard(7, pings=True)
    assert 5 <= first.count(False) <= 25
    assert first != heard(8, pings=False)


def test_close_stops_the_timer_and_nothing_is_sent_after_bye():
    net, (a, b) = network(2, [(0, 1)], spec="1>0:delay=0.5")
    time.sleep(0.6)  # the HELLO arrives
    assert b.send(0, factors(1, 0))
    timer = b.chaos._thread
    assert timer is not None and timer.is_alive()
    b.close()  # the BYE is not delayed, and the pending message is discarded
    heard = received(a, 1)
    assert 1 not in a.live_neighbours()
    time.sleep(0.8)
    assert received(a, 1) == heard and not timer.is_alive()
    assert b.counters()["chaos"]["discarded_at_close"] == 1


def test_a_killed_transport_stops_its_timer_too():
    net, (a, b) = network(2, [(0, 1)], spec="delay=0.5")
    b.send(0, factors(1, 0))
    timer = b.chaos._thread
    net.kill(1)  # no BYE: the timer sees the transport closed
    timer.join(timeout=1.0)
    assert not timer.is_alive()
