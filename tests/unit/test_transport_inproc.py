"""The round-inbox semantics of a transport, through InProcTransport (no sockets; the same frames and validation)."""
import threading
import time

import msgpack
import pytest
import torch

from declora.core.factors import Adapter, LoraFactor
from declora.wire.adapter_messages import encode_adapter, message_to_adapter
from declora.wire.inproc import InProcNetwork
from declora.wire.protocol import AdapterLayout, Kind, make_message, to_frames
from declora.wire.transport import RoundResult


def adapter(seed):
    g = torch.Generator().manual_seed(seed)
    return Adapter({"m": LoraFactor(torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g), 4.0)},
                   {"head": torch.randn(3, generator=g)})


LAYOUT = AdapterLayout.from_adapter(adapter(0), equal_rank=True)


def factors(sender, round, kind=Kind.FACTORS, seed=None):
    return make_message(kind, sender, round, encode_adapter(adapter(sender if seed is None else seed), "fp32"))


def ring(n, net=None, **kw):
    net = net or InProcNetwork()
    return net, [net.transport(i, [(i - 1) % n, (i + 1) % n], layout=LAYOUT, **kw).start() for i in range(n)]


def in_parallel(fns):
    out = [None] * len(fns)
    threads = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f())) for k, f in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_ring_exchange_delivers_every_neighbour_and_the_exact_adapter():
    net, peers = ring(4)
    results = in_parallel([lambda p=p: p.exchange(0, factors(p.peer_id, 0), deadline_s=5) for p in peers])
    for p, res in zip(peers, results):
        assert isinstance(res, RoundResult)
        assert sorted(res.received) == sorted(p.neighbours) and res.missing == []
        for j, msg in res.received.items():
            got = message_to_adapter(msg, LAYOUT)
            assert torch.equal(got.factors["m"].A, adapter(j).factors["m"].A)
            assert torch.equal(got.dense["head"], adapter(j).dense["head"])
    c = peers[0].counters()
    assert c["messages_sent_total"] >= 2 and c["bytes_received_total"] > 0 and c["dropped_total"] == 0
    assert c["sent"][1]["bytes"] >= factors(0, 0).nbytes


def test_hello_bodies_are_exchanged_whoever_starts_first():
    net = InProcNetwork()
    a = net.transport(0, [1], layout=LAYOUT).start()
    b = net.transport(1, [0], layout=LAYOUT).start()
    assert AdapterLayout.from_body(a.hello(1)["layout"]) == LAYOUT
    assert AdapterLayout.from_body(b.hello(0)["layout"]) == LAYOUT


def test_later_rounds_are_buffered_and_earlier_rounds_dropped_and_counted():
    net, (a, b) = ring(2)
    assert b.send(0, factors(1, 1))  # round 1 arrives while 0 still works on round 0
    assert b.send(0, factors(1, 0))
    r0 = a.collect(0, Kind.FACTORS, {1}, deadline_s=1)
    assert list(r0.received) == [1] and r0.received[1].round == 0
    r1 = a.collect(1, Kind.FACTORS, {1}, deadline_s=0)  # already buffered: no waiting at all
    assert list(r1.received) == [1] and r1.received[1].round == 1 and r1.waited_s < 0.5
    b.send(0, factors(1, 1))  # a replay of a finished round
    b.send(0, factors(1, 0))
    assert a.counters()["dropped"]["old_round"] == 2


def test_far_future_and_duplicate_messages_are_dropped():
    net, (a, b) = ring(2, max_future_rounds=2)
    a.collect(0, Kind.FACTORS, set(), deadline_s=0)  # sets a's window to rounds 1..3
    b.send(0, factors(1, 4))
    b.send(0, factors(1, 3))
    b.send(0, factors(1, 3, seed=9))  # a second, different message for the same round: first one wins
    dropped = a.counters()["dropped"]
    assert dropped == {"future_round": 1, "duplicate": 1}
    got = a.collect(3, Kind.FACTORS, {1}, deadline_s=0).received[1]
    assert torch.equal(message_to_adapter(got).dense["head"], adapter(1).dense["head"])


def test_a_flooding_neighbour_evicts_only_its_own_messages():
    """Before the first collect there is no round floor: a neighbour sending ever newer rounds (here near 10^9)
    pushes out its own oldest messages, never another neighbour's round-0 message."""
    net, (a, b, c) = ring(3, max_future_rounds=2)
    assert c.send(0, factors(2, 0))  # the honest neighbour's round 0, in before the flood
    for r in range(10**9, 10**9 + 20):
        b.send(0, factors(1, r))
    assert a.counters()["dropped"] == {"evicted": 17}  # b keeps max_future_rounds + 1 = 3 rounds
    res = a.collect(0, Kind.FACTORS, {2}, deadline_s=5)
    assert list(res.received) == [2] and res.waited_s < 1  # no deadline wait: round 0 was still there


def test_rounds_skipped_by_the_receiver_are_dropped_as_old():
    net, (a, b) = ring(2)
    b.send(0, factors(1, 0))
    b.send(0, factors(1, 1))
    res = a.collect(1, Kind.FACTORS, {1}, deadline_s=0)  # a jumped straight to round 1 (a late joiner)
    assert list(res.received) == [1]
    assert a.counters()["dropped"] == {"old_round": 1}


def test_kinds_have_separate_rounds():
    # The parameter-server baseline: UPDATE and AGGREGATE of the same round do not collide.
    net = InProcNetwork()
    server = net.transport(0, [1, 2], layout=LAYOUT).start()
    clients = [net.transport(i, [0], layout=LAYOUT).start() for i in (1, 2)]
    for c in clients:
        assert c.send(0, factors(c.peer_id, 0, Kind.UPDATE))
    ups = server.collect(0, Kind.UPDATE, {1, 2}, deadline_s=1)
    assert sorted(ups.received) == [1, 2]
    assert server.broadcast(factors(0, 0, Kind.AGGREGATE)) == {1: True, 2: True}
    for c in clients:
        assert list(c.collect(0, Kind.AGGREGATE, {0}, deadline_s=1).received) == [0]
    # Clients are not each other's neighbours: nothing assumes the graph is more than "who I talk to".
    with pytest.raises(ValueError, match="not a neighbour"):
        clients[0].send(2, factors(1, 0))


def test_collect_waits_for_a_slow_neighbour_until_it_delivers():
    net, (a, b) = ring(2)
    threading.Timer(0.3, lambda: b.send(0, factors(1, 0))).start()
    t0 = time.monotonic()
    res = a.collect(0, Kind.FACTORS, {1}, deadline_s=10)
    assert list(res.received) == [1] and 0.2 < time.monotonic() - t0 < 5


def test_collect_gives_up_at_the_deadline_and_names_the_missing():
    net, (a, b) = ring(2)
    res = a.collect(0, Kind.FACTORS, {1}, deadline_s=0.3)
    assert res.received == {} and res.missing == [1] and 0.25 <= res.waited_s < 3


def test_a_dead_peer_is_not_waited_for_and_a_restarted_one_is_used_again():
    net, peers = ring(3)
    net.kill(2)
    assert peers[0].live_neighbours() == {1}
    assert peers[0].send(2, factors(0, 0)) is False
    assert peers[0].broadcast(factors(0, 0)) == {1: True}
    assert peers[1].send(0, factors(1, 0))
    t0 = time.monotonic()
    res = peers[0].collect(0, Kind.FACTORS, {1, 2}, deadline_s=10)
    assert time.monotonic() - t0 < 5 and list(res.received) == [1] and res.missing == [2]
    # A peer dying during a collect releases the waiter too.
    threading.Timer(0.2, lambda: net.kill(1)).start()
    t0 = time.monotonic()
    res = peers[0].collect(1, Kind.FACTORS, {1, 2}, deadline_s=10)
    assert time.monotonic() - t0 < 5 and res.missing == [1, 2]
    # Restart both at round 2 (a restarted peer states its round, as the peer loop does): live and used again.
    back = [net.transport(i, [(i - 1) % 3, (i + 1) % 3], layout=LAYOUT) for i in (1, 2)]
    for p in back:
        p.set_round(2)
        p.start()
    assert peers[0].live_neighbours() == {1, 2}
    results = in_parallel([lambda: peers[0].exchange(2, factors(0, 2), 5)]
                          + [lambda p=p: p.exchange(2, factors(p.peer_id, 2), 5) for p in back])
    assert sorted(results[0].received) == [1, 2]


def test_bye_marks_down_immediately():
    net, (a, b) = ring(2)
    b.close()
    assert a.live_neighbours() == set()
    assert a.collect(0, Kind.FACTORS, {1}, deadline_s=10).missing == [1]


def test_bad_input_is_dropped_counted_and_never_raises():
    net, (a, b) = ring(2)
    good = [bytes(memoryview(f).cast("B")) for f in to_frames(factors(1, 0))]
    h = msgpack.unpackb(good[0])
    wrong_version = [msgpack.packb({**h, "v": 99}), *good[1:]]
    forged = [msgpack.packb({**h, "sender": 1}), *good[1:]]
    nan = list(good)
    frame = bytearray(nan[1])
    frame[:4] = bytes.fromhex("0000c07f")
    nan[1] = bytes(frame)
    net.deliver_raw(0, 1, [b"\x00garbage"])
    net.deliver_raw(0, 1, good[:-1])
    net.deliver_raw(0, 1, wrong_version)
    net.deliver_raw(0, 1, nan)
    net.deliver_raw(0, 5, good)  # not a neighbour
    net.deliver_raw(0, None, good)  # the link layer could not name the sender
    forged_from_self = [msgpack.packb({**h, "sender": 0}), *good[1:]]
    net.deliver_raw(0, 1, forged_from_self)  # neighbour 1 claims to be peer 0
    assert forged  # (sender 1 from identity 1 is legitimate, checked below)
    assert a.counters()["dropped"] == {"bad_header": 1, "frames": 1, "version": 1, "nonfinite": 1,
                                       "not_neighbour": 1, "no_identity": 1, "forged_sender": 1}
    # None of it reached the inbox; the real message still does.
    net.deliver_raw(0, 1, good)
    res = a.collect(0, Kind.FACTORS, {1}, deadline_s=1)
    assert list(res.received) == [1]
    assert torch.equal(message_to_adapter(res.received[1]).factors["m"].B, adapter(1).factors["m"].B)


def test_layout_is_enforced_on_receive():
    net, (a, b) = ring(2)
    wrong = Adapter({"m": LoraFactor(torch.randn(3, 6), torch.randn(5, 3), 4.0)}, {"head": torch.randn(3)})
    assert b.send(0, make_message(Kind.FACTORS, 1, 0, encode_adapter(wrong)))  # sent fine, refused on arrival
    assert a.collect(0, Kind.FACTORS, {1}, deadline_s=0).received == {}
    assert a.counters()["dropped"] == {"rank": 1}


def test_exchange_checks_the_round_and_context_manager_closes():
    net = InProcNetwork()
    with net.transport(0, [1]) as a, net.transport(1, [0]) as b:
        with pytest.raises(ValueError, match="round"):
            a.exchange(1, factors(0, 0), 1)
        assert a.live_neighbours() == {1}
    assert not net.is_up(0) and not net.is_up(1)


def test_nobody_waits_for_a_neighbour_known_to_be_behind_or_already_past_the_round():
    net, (a, b, c) = ring(3)
    a.set_round(5)
    b.send(0, factors(1, 2))  # b's latest word is round 2: at round 5 it is behind
    c.send(0, factors(2, 7))  # c is already at round 7: its round-5 message went by before we could hear it
    t0 = time.monotonic()
    res = a.collect(5, Kind.FACTORS, {1, 2}, deadline_s=10)
    assert time.monotonic() - t0 < 2 and res.received == {} and res.missing == [1, 2]
    b.send(0, factors(1, 6))  # b caught up: waited for (and heard) again
    assert list(a.collect(6, Kind.FACTORS, {1}, deadline_s=5).received) == [1]


def state_message(sender, round, adapter_seed=None):
    return make_message(Kind.STATE, sender, round, encode_adapter(adapter(sender if adapter_seed is None else
                                                                          adapter_seed), "fp32"))


def test_state_transfer_answers_with_the_published_state_checked_and_rate_limited():
    net, (a, b, c) = ring(3)
    assert b.request_state(0.3) == {}  # nobody has published yet
    a.publish_state(state_message(0, 41))
    c.publish_state(state_message(2, 40))
    got = b.request_state(5)
    assert {j: m.round for j, m in got.items()} == {0: 41, 2: 40}
    assert torch.equal(message_to_adapter(got[0], LAYOUT).factors["m"].A, adapter(0).factors["m"].A)
    b._send_control(0, Kind.STATE_REQUEST)  # asked again at once: not answered (a flood costs one answer a second)
    time.sleep(0.2)
    assert a.counters()["dropped"].get("state_request_flood") == 1
    with pytest.raises(ValueError):
        a.publish_state(factors(0, 1))
