"""A running peer process under attack, from raw pyzmq sockets in this test process.

Plain text: random bytes, truncated multipart, wrong version, wrong shapes, oversize (over the app limit, and over
ZeroMQ's MAXMSGSIZE), NaN payloads, replayed and far-future rounds, forged and unknown senders. CURVE: unknown keys,
plain-text clients and non-neighbour keys deliver nothing; a real key that forges its sender id is dropped.
In every case the peer keeps running, its adapter is untouched, and each attack is counted by reason.
"""
import random
import time

import msgpack
import pytest
import torch
import zmq

from declora.core.factors import Adapter, LoraFactor
from declora.wire.adapter_messages import encode_adapter
from declora.wire.protocol import AdapterLayout, Kind, Limits, make_message, to_frames
from declora.wire.security import generate_keys, load_security
from declora.wire.zmq_transport import max_frame_bytes

from .wire_peer import ALPHA, DIN, DOUT, RANK, Cluster, state_to_adapter, synthetic_adapter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

LIMIT = 1 << 20  # the peer's max message size
# ZeroMQ's MAXMSGSIZE: the largest frame a valid message of the peer's layout can have
FRAME_LIMIT = max_frame_bytes(AdapterLayout.from_adapter(synthetic_adapter(0), equal_rank=True),
                              Limits(max_message_bytes=LIMIT))


def frames(msg):
    return [bytes(memoryview(f).cast("B")) for f in to_frames(msg)]


def factors(sender, round, adapter=None):
    return frames(make_message(Kind.FACTORS, sender, round, encode_adapter(adapter or synthetic_adapter(sender))))


def reheader(fr, **changes):
    h = msgpack.unpackb(fr[0], raw=False)
    h.update(changes)
    return [msgpack.packb(h, use_bin_type=True), *fr[1:]]


def dealer(ctx, endpoint, routing_id, security=None, server_key=None):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.routing_id = routing_id
    if security is not None:
        s.curve_publickey, s.curve_secretkey = security
        s.curve_serverkey = server_key
    s.connect(endpoint)
    return s


def send(sock, fr):
    try:
        sock.send_multipart(fr, zmq.NOBLOCK)
    except zmq.Again:  # no connection (as intended for refused keys)
        pass


def start_target(cluster, stop, *extra):
    cluster.start(0, "--neighbours", "1", "--rounds", "100000", "--until-file", str(stop), "--deadline", "0.3",
                  "--round-sleep", "0.05", "--wait-for", "", "--max-message-bytes", str(LIMIT), *extra)
    cluster.wait_until(lambda: cluster.progress("peer-0") >= 1, 90, "peer 0 to run")


def finish_target(cluster, stop):
    stop.write_text("stop")
    codes = cluster.finish(timeout=30)
    assert codes == {"peer-0": 0}, cluster.logs()
    data, info = cluster.result("peer-0")
    # Untouched: nothing valid ever arrived, so every round mixed peer 0 with itself alone.
    assert all(r["heard"] == [] for r in data["trace"])
    final, initial = state_to_adapter(data["final"]), synthetic_adapter(0)
    for k in initial.factors:
        assert torch.equal(final.factors[k].A, initial.factors[k].A)
        assert torch.equal(final.factors[k].B, initial.factors[k].B)
    assert torch.equal(final.dense["score.weight"], initial.dense["score.weight"])
    return info["counters"]


def expect_pong(listener, timeout=5.0):
    """The peer answers a PING with a PONG on our ROUTER: it is alive and responsive."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if listener.poll(100):
            fr = listener.recv_multipart()
            if msgpack.unpackb(fr[1], raw=False)["kind"] == "pong":
                return True
    return False


def test_hostile_input_is_dropped_counted_and_harmless(tmp_path):
    cluster = Cluster(tmp_path, 2)
    stop = tmp_path / "stop"
    ctx = zmq.Context()
    listener = ctx.socket(zmq.ROUTER)  # plays neighbour 1's ROUTER, to see the peer's PONGs
    listener.linger = 0
    listener.bind(cluster.book[1])
    try:
        start_target(cluster, stop)
        target = cluster.book[0]
        as_one = dealer(ctx, target, b"1")
        time.sleep(0.5)  # connected (plain DEALERs queue anyway)
        rng = random.Random(7)
        now = cluster.progress("peer-0")
        wrong_shape = Adapter({k: LoraFactor(torch.randn(RANK, DIN + 1), torch.randn(DOUT, RANK), ALPHA)
                               for k in synthetic_adapter(1).factors}, synthetic_adapter(1).dense)
        nan = factors(1, now + 2)
        h = msgpack.unpackb(nan[0], raw=False)
        fi, off, _ = h["tensors"][0]["bufs"][0]
        frame = bytearray(nan[fi])
        frame[off: off + 4] = bytes.fromhex("0000c07f")
        nan[fi] = bytes(frame)
        attacks = [
            ("bad_header", [rng.randbytes(rng.randint(1, 300))]),
            ("bad_header", [rng.randbytes(rng.randint(1, 300))]),
            ("bad_header", [rng.randbytes(rng.randint(1, 300)), rng.randbytes(10)]),
            ("frames", factors(1, now + 2)[:-1]),  # truncated multipart
            ("version", reheader(factors(1, now + 2), v=2)),
            ("shape", factors(1, now + 2, wrong_shape)),
            # Over the whole-message limit in frames that each fit the layout's frame limit (ZeroMQ passes them on).
            ("oversize", [*frames(make_message(Kind.PING, 1, 0)),
                          *[bytes(FRAME_LIMIT - 64)] * (LIMIT // (FRAME_LIMIT - 64) + 1)]),
            ("nonfinite", nan),
            ("future_round", factors(1, now + 1000)),
            ("forged_sender", reheader(factors(1, now + 2), sender=5)),
        ]
        for _, fr in attacks:
            send(as_one, fr)
        cluster.wait_until(lambda: cluster.progress("peer-0") >= max(now, 3) + 2, 30, "peer 0 to move on")
        send(as_one, factors(1, 0))  # a replay of a round long over (valid otherwise: it would change the adapter)
        unknown = dealer(ctx, target, b"9")
        send(unknown, frames(make_message(Kind.PING, 9, 0)))  # not a neighbour
        nameless = dealer(ctx, target, b"eve")
        send(nameless, frames(make_message(Kind.PING, 1, 0)))  # no peer id at all
        huge = dealer(ctx, target, b"8")
        send(huge, [bytes(FRAME_LIMIT + 1)])  # over MAXMSGSIZE: ZeroMQ itself cuts the connection
        time.sleep(1.0)
        assert cluster.procs["peer-0"].poll() is None, "the peer died"
        send(as_one, frames(make_message(Kind.PING, 1, 0)))
        assert expect_pong(listener), "the peer stopped answering"
        counters = finish_target(cluster, stop)
    finally:
        cluster.kill_all()
        ctx.destroy(linger=0)
    expected = {}
    for reason, _ in attacks + [("old_round", None), ("not_neighbour", None), ("no_identity", None)]:
        expected[reason] = expected.get(reason, 0) + 1
    assert counters["dropped"] == expected
    assert counters["socket_events"].get("disconnected", 0) >= 1  # the MAXMSGSIZE cut


def test_curve_refuses_unknown_keys_and_forged_ids(tmp_path):
    cluster = Cluster(tmp_path, 3)
    keys = tmp_path / "keys"
    generate_keys(keys, [0, 1, 2])
    me, two = load_security(keys, 1), load_security(keys, 2)
    server_key = me.key_of(0)
    stop = tmp_path / "stop"
    ctx = zmq.Context()
    listener = ctx.socket(zmq.ROUTER)  # neighbour 1's ROUTER, with 1's real key (the peer pins it)
    listener.linger = 0
    listener.curve_secretkey, listener.curve_publickey, listener.curve_server = me.secret_key, me.public_key, True
    listener.bind(cluster.book[1])
    try:
        start_target(cluster, stop, "--keys", str(keys))
        target = cluster.book[0]
        refused = [
            dealer(ctx, target, b"1", zmq.curve_keypair(), server_key),  # a key nobody listed
            dealer(ctx, target, b"1"),  # plain text to a CURVE server
            dealer(ctx, target, b"2", (two.public_key, two.secret_key), server_key),  # a real key, not a neighbour
            dealer(ctx, target, b"1", (me.public_key, me.secret_key), me.public_key),  # 1's key, wrong server key
        ]
        for s in refused:
            for r in range(5):
                send(s, frames(make_message(Kind.PING, 1 if s is not refused[2] else 2, r)))
        legit = dealer(ctx, target, b"1", (me.public_key, me.secret_key), server_key)
        claims_two = dealer(ctx, target, b"2", (me.public_key, me.secret_key), server_key)
        time.sleep(1.0)
        send(legit, frames(make_message(Kind.PING, 2, 0)))  # 1's key, header says 2
        send(claims_two, frames(make_message(Kind.PING, 2, 0)))  # ...and routing id 2 as well
        send(legit, frames(make_message(Kind.PING, 1, 0)))  # the one honest message
        assert expect_pong(listener), "the legitimate PING got no PONG"
        time.sleep(0.5)
        counters = finish_target(cluster, stop)
    finally:
        cluster.kill_all()
        ctx.destroy(linger=0)
    # Exactly one message got through: the honest PING. Refused keys never reached the application at all.
    assert counters["messages_received_total"] == 1 and counters["received"]["1"]["messages"] == 1
    assert counters["dropped"] == {"forged_sender": 2}
    events = counters["socket_events"]
    assert events.get("auth_failed", 0) >= 2  # the unknown key and peer 2's key
    assert events.get("handshake_failed_protocol", 0) + events.get("handshake_failed", 0) >= 1  # plain text
