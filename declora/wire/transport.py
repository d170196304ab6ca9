"""Moving messages between peers: ZeroMQ sockets (the Harmony pattern), liveness, and the round inbox.

`ZmqTransport` binds one ROUTER for everything inbound and opens one DEALER per neighbour whose routing id is this
peer's id (DESIGN.md section 2). A background I/O thread owns the receiving side: it validates every message with
`protocol.from_frames`, answers PINGs, pings quiet neighbours and marks them down after
`missed_intervals_before_down` silent intervals, so liveness keeps working while the main thread trains. The main
thread sends (never blocking: a full queue or a missing connection returns False) and collects rounds.

`InProcTransport` (from an `InProcNetwork`) has the same interface and runs every message through the same
`to_frames`/`from_frames` and the same inbox logic, without sockets: for unit tests of the peer loop.

Nothing is assumed symmetric beyond "I hear from my neighbours": a parameter server is a peer whose neighbours are
all clients, and each client's only neighbour is the server.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from declora.wire import security as sec
from declora.wire.protocol import (
    PROTOCOL_VERSION,
    TENSOR_KINDS,
    AdapterLayout,
    Kind,
    Limits,
    Message,
    ProtocolError,
    decode_message,
    from_frames,
    make_message,
    to_frames,
)

log = logging.getLogger("declora.wire.transport")


@dataclass(frozen=True)
class Liveness:
    """A neighbour quiet for `heartbeat_interval_s` gets a PING; quiet for `missed_intervals_before_down` intervals,
    it counts as down until it speaks again."""

    heartbeat_interval_s: float = 1.0
    missed_intervals_before_down: int = 3

    def __post_init__(self) -> None:
        if not (self.heartbeat_interval_s > 0 and math.isfinite(self.heartbeat_interval_s)):
            raise ValueError(f"heartbeat_interval_s must be a positive number, got {self.heartbeat_interval_s}")
        if self.missed_intervals_before_down < 1:
            raise ValueError(f"missed_intervals_before_down must be >= 1, got {self.missed_intervals_before_down}")

    @property
    def down_after_s(self) -> float:
        return self.heartbeat_interval_s * self.missed_intervals_before_down


@dataclass
class RoundResult:
    """What `collect` got: every neighbour's message for the round, who was expected but did not deliver, how long
    it waited."""

    received: dict[int, Message]
    missing: list[int]
    waited_s: float
    bytes_sent: int = 0  # this round's own message, once per neighbour it was handed to (no heartbeats)


class _DropLog:
    """One log line per dropped message, thinned out for floods: the first 10 of each reason, then every 1000th."""

    def __init__(self, peer_id: int):
        self.peer_id = peer_id
        self.counts: Counter = Counter()

    def __call__(self, reason: str, sender: object, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= 10 or n % 1000 == 0:
            log.warning("peer %d dropped a message from %s: %s (%s) [%d so far]", self.peer_id, sender, reason, detail, n)


class _RefusalLog:
    """One log line per refused connection (a failed handshake), thinned out like _DropLog."""

    def __init__(self, peer_id: int):
        self.peer_id = peer_id
        self.counts: Counter = Counter()

    def __call__(self, event: str) -> None:
        self.counts[event] += 1
        n = self.counts[event]
        if n <= 10 or n % 1000 == 0:
            log.warning("peer %d refused a connection: %s (wrong key, unknown key or no CURVE) [%d so far]",
                        self.peer_id, event, n)


class Transport:
    """The round inbox, liveness bookkeeping and counters shared by the ZeroMQ and in-process transports.

    Subclasses provide `_send_frames(to, frames) -> bool` and `_live_set() -> set[int]`, and feed every received
    multipart message to `_receive(identity, frames)`, where `identity` is who the link layer says sent it.
    """

    def __init__(self, peer_id: int, neighbours: Iterable[int], *, layout: AdapterLayout | None = None,
                 limits: Limits = Limits(), liveness: Liveness = Liveness(), max_future_rounds: int = 4,
                 decode: bool = True):
        self.peer_id = int(peer_id)
        self.neighbours: tuple[int, ...] = tuple(sorted({int(j) for j in neighbours} - {self.peer_id}))
        self.layout = layout
        self.limits = limits
        self.liveness = liveness
        self.max_future_rounds = int(max_future_rounds)
        self.decode = decode  # False: received tensors keep their raw buffers (protocol.decode_message later)
        self.endpoint = ""
        self._cv = threading.Condition()
        self._inbox: dict[tuple[Kind, int], dict[int, Message]] = {}
        self._floor: dict[Kind, int] = {}  # per kind: rounds below this are over
        self._round = 0  # this peer's current round, stated in PINGs and HELLOs
        self._hello: dict[int, dict] = {}
        self._peer_round: dict[int, int] = {}
        self._started = False
        self._closed = False
        self._c_sent = {j: Counter() for j in self.neighbours}
        self._c_recv = {j: Counter() for j in self.neighbours}
        self._c_drop: Counter = Counter()
        self._c_down = Counter()
        self._c_events: Counter = Counter()
        self._drop_log = _DropLog(self.peer_id)

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> "Transport":
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Transport":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- sending --------------------------------------------------------------------------------------------------
    def send(self, to: int, message: Message) -> bool:
        """Queue a message for neighbour `to`; never blocks. False when `to` is down or its queue is full."""
        if to not in self._c_sent:
            raise ValueError(f"peer {to} is not a neighbour of peer {self.peer_id} (neighbours {list(self.neighbours)})")
        if message.kind in TENSOR_KINDS:
            self._round = max(self._round, message.round)
        if to in self._down_set():
            with self._cv:
                self._c_sent[to]["failed"] += 1
            return False
        return self._send_counted(to, to_frames(message), message.nbytes)

    def broadcast(self, message: Message, to: Iterable[int] | None = None) -> dict[int, bool]:
        """Send to each of `to` (default: every live neighbour); the frames are built once."""
        targets = sorted(self.live_neighbours() if to is None else set(to))
        return {j: self.send(j, message) for j in targets}

    def _send_counted(self, to: int, frames: list, nbytes: int) -> bool:
        # No down check here: pings and hellos must reach a neighbour we think is down, that is how it comes back.
        ok = self._send_frames(to, frames)
        with self._cv:
            c = self._c_sent[to]
            if ok:
                c["messages"] += 1
                c["bytes"] += nbytes
            else:
                c["failed"] += 1
        return ok

    def _send_control(self, to: int, kind: Kind, body: dict | None = None) -> bool:
        msg = make_message(kind, self.peer_id, self._round, body=body)
        return self._send_counted(to, to_frames(msg), msg.nbytes)

    def _hello_body(self) -> dict:
        body = {"endpoint": self.endpoint, "version": PROTOCOL_VERSION}
        if self.layout is not None:
            body["layout"] = self.layout.to_body()
        return body

    # ---- receiving a round ------------------------------------------------------------------------------------------
    def collect(self, round: int, kind: Kind | str, expect: Iterable[int], deadline_s: float) -> RoundResult:
        """Wait until every live peer in `expect` has delivered its `kind` message of `round`, or `deadline_s`
        seconds have passed. Returns every neighbour's message of that round (expected or not); afterwards
        messages of this kind from this round or earlier are dropped as old."""
        kind = Kind(kind)
        expect = {int(j) for j in expect}
        start = time.monotonic()
        end = start + max(0.0, float(deadline_s))
        tick = min(0.25, self.liveness.heartbeat_interval_s / 2)
        with self._cv:
            self._round = max(self._round, int(round))
            self._advance_floor(kind, int(round))
            while True:
                box = self._inbox.get((kind, round), {})
                waiting = (expect & self._live_set()) - set(box)
                now = time.monotonic()
                if not waiting or now >= end:
                    break
                self._cv.wait(min(end - now, tick))
            received = self._inbox.pop((kind, round), {})
            self._floor[kind] = int(round) + 1
        return RoundResult(dict(sorted(received.items())), sorted(expect - set(received)), time.monotonic() - start)

    def exchange(self, round: int, message: Message, deadline_s: float) -> RoundResult:
        """Send this round's message to every live neighbour, then collect theirs (same kind and round)."""
        if message.round != round:
            raise ValueError(f"message is for round {message.round}, not {round}")
        sent = self.broadcast(message)
        result = self.collect(round, message.kind, set(self.neighbours), deadline_s)
        result.bytes_sent = message.nbytes * sum(sent.values())
        return result

    def _advance_floor(self, kind: Kind, floor: int) -> None:
        """Rounds below `floor` are over: drop what is buffered for them, and anything too far ahead (lock held)."""
        self._floor[kind] = max(self._floor.get(kind, floor), floor)
        floor = self._floor[kind]
        for k, r in [key for key in self._inbox if key[0] == kind]:
            if r < floor or r > floor + self.max_future_rounds:
                reason = "old_round" if r < floor else "future_round"
                for sender in self._inbox.pop((k, r)):
                    self._count_drop(reason, sender, f"round {r} buffered, now at {floor}")

    # ---- state --------------------------------------------------------------------------------------------------------
    def live_neighbours(self) -> set[int]:
        with self._cv:
            return set(self._live_set())

    def service(self, timeout_s: float = 0.0) -> None:
        """Give the transport a moment: waits up to `timeout_s` for any news (a message or a liveness change).
        The I/O runs on its own thread, so calling this is never required for liveness."""
        if timeout_s > 0:
            with self._cv:
                self._cv.wait(timeout_s)

    def wait_for_neighbours(self, timeout_s: float, which: Iterable[int] | None = None) -> set[int]:
        """Wait until the given neighbours (default: all) are live; return those still not live at the timeout."""
        want = set(self.neighbours if which is None else which)
        end = time.monotonic() + timeout_s
        with self._cv:
            while True:
                missing = want - self._live_set()
                now = time.monotonic()
                if not missing or now >= end:
                    return missing
                self._cv.wait(min(end - now, 0.1))

    def neighbour_rounds(self) -> dict[int, int]:
        """The latest round each neighbour has mentioned (in any message): how a (re)joining peer finds its place."""
        with self._cv:
            return dict(self._peer_round)

    def hello(self, peer: int) -> dict | None:
        """The HELLO body `peer` sent (endpoint, version, layout), if it has sent one."""
        with self._cv:
            return self._hello.get(peer)

    def counters(self) -> dict:
        """Bytes and messages per neighbour, drops by reason, down events; JSON-ready apart from int keys."""
        with self._cv:
            sent = {j: dict(c) for j, c in self._c_sent.items()}
            recv = {j: dict(c) for j, c in self._c_recv.items()}
            return {
                "peer": self.peer_id,
                "bytes_sent_total": sum(c.get("bytes", 0) for c in sent.values()),
                "messages_sent_total": sum(c.get("messages", 0) for c in sent.values()),
                "send_failed_total": sum(c.get("failed", 0) for c in sent.values()),
                "bytes_received_total": sum(c.get("bytes", 0) for c in recv.values()),
                "messages_received_total": sum(c.get("messages", 0) for c in recv.values()),
                "dropped_total": sum(self._c_drop.values()),
                "sent": sent,
                "received": recv,
                "dropped": dict(self._c_drop),
                "went_down": dict(self._c_down),
                "socket_events": dict(self._c_events),
            }

    # ---- subclass hooks -------------------------------------------------------------------------------------------------
    def _send_frames(self, to: int, frames: list) -> bool:
        raise NotImplementedError

    def _live_set(self) -> set[int]:
        """Neighbours currently live (lock held)."""
        raise NotImplementedError

    def _down_set(self) -> set[int]:
        """Neighbours known to be down: sends to them fail fast."""
        return set()

    def _heard(self, sender: int, msg: Message) -> None:
        """Any valid message from `sender` (lock held)."""

    def _said_bye(self, sender: int) -> None:
        """`sender` is leaving (lock held)."""

    # ---- the receive path ----------------------------------------------------------------------------------------------
    def _count_drop(self, reason: str, sender: object, detail: str) -> None:
        self._c_drop[reason] += 1
        self._drop_log(reason, sender, detail)

    def _drop(self, reason: str, sender: object, detail: str) -> None:
        with self._cv:
            self._count_drop(reason, sender, detail)

    def _receive(self, identity: int | None, frames: Sequence) -> None:
        """Validate one inbound multipart message from `identity` and file it. Never raises for bad input."""
        if identity is None:
            self._drop("no_identity", "?", "the sender has no valid peer id")
            return
        if identity not in self._c_recv:
            self._drop("not_neighbour", identity, f"peer {identity} is not a neighbour")
            return
        try:
            msg = from_frames(frames, layout=self.layout, limits=self.limits, decode=False)
        except ProtocolError as e:
            self._drop(e.reason, identity, str(e))
            return
        if msg.sender != identity:
            self._drop("forged_sender", identity, f"header claims sender {msg.sender}")
            return
        if msg.kind in TENSOR_KINDS:
            self._file_round_message(identity, msg)
            return
        with self._cv:
            self._count_received(identity, msg)
            if msg.kind == Kind.HELLO:
                self._hello[identity] = msg.body
            if msg.kind == Kind.BYE:
                self._said_bye(identity)
            self._cv.notify_all()
        if msg.kind == Kind.PING:
            self._send_control(identity, Kind.PONG)
        elif msg.kind == Kind.HELLO and not msg.body.get("reply"):
            # Answer a first contact with our own HELLO (marked as a reply, so it is not answered again): both
            # sides then know each other's endpoint and layout, whoever came up first.
            self._send_control(identity, Kind.HELLO, {**self._hello_body(), "reply": True})

    def _count_received(self, sender: int, msg: Message) -> None:
        c = self._c_recv[sender]
        c["messages"] += 1
        c["bytes"] += msg.nbytes
        self._peer_round[sender] = max(self._peer_round.get(sender, 0), msg.round)
        if msg.kind != Kind.BYE:
            self._heard(sender, msg)

    def _round_problem(self, sender: int, msg: Message) -> tuple[str, str] | None:
        """Why a round message cannot be kept, or None (lock held)."""
        floor = self._floor.get(msg.kind)
        if floor is not None and msg.round < floor:
            return "old_round", f"{msg.kind.value} round {msg.round}, already at round {floor}"
        if floor is not None and msg.round > floor + self.max_future_rounds:
            return "future_round", f"{msg.kind.value} round {msg.round}, only up to {floor + self.max_future_rounds} kept"
        if sender in self._inbox.get((msg.kind, msg.round), {}):
            return "duplicate", f"second {msg.kind.value} for round {msg.round}"
        return None

    def _file_round_message(self, sender: int, msg: Message) -> None:
        with self._cv:
            self._count_received(sender, msg)  # a valid envelope from this neighbour: it is alive
            problem = self._round_problem(sender, msg)
            if problem:
                self._count_drop(problem[0], sender, problem[1])
                self._cv.notify_all()
                return
        if self.decode:
            try:  # outside the lock: decoding a big adapter takes a while
                decode_message(msg)
            except ProtocolError as e:
                self._drop(e.reason, sender, str(e))
                return
        with self._cv:
            problem = self._round_problem(sender, msg)  # the main thread may have moved on meanwhile
            if problem:
                self._count_drop(problem[0], sender, problem[1])
                return
            self._inbox.setdefault((msg.kind, msg.round), {})[sender] = msg
            self._evict_excess(msg.kind)
            self._cv.notify_all()

    def _evict_excess(self, kind: Kind) -> None:
        """Before the first collect there is no floor: keep at most max_future_rounds + 1 rounds (lock held)."""
        rounds = sorted(r for k, r in self._inbox if k == kind)
        for r in rounds[: max(0, len(rounds) - self.max_future_rounds - 1)]:
            for sender in self._inbox.pop((kind, r)):
                self._count_drop("evicted", sender, f"round {r} pushed out by newer rounds")


# ---- ZeroMQ -------------------------------------------------------------------------------------------------------------
_MONITOR_EVENTS = {
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
}


class ZmqTransport(Transport):
    """The Harmony pattern over ZeroMQ: one ROUTER in, one DEALER out per neighbour, liveness on an I/O thread.

    `bind` may use port `*` (e.g. `tcp://127.0.0.1:*`); `endpoint` is the address actually bound. With `security`
    every link is CurveZMQ and senders are named by their keys; without it, every endpoint must be loopback or
    ipc:// unless `allow_plaintext_nonlocal`.
    """

    def __init__(self, peer_id: int, bind: str, neighbours: dict[int, str], *, layout: AdapterLayout | None = None,
                 limits: Limits = Limits(), liveness: Liveness = Liveness(),
                 security: sec.SecurityConfig | None = None, allow_plaintext_nonlocal: bool = False,
                 sndhwm: int = 16, rcvhwm: int = 64, linger_s: float = 1.0, max_future_rounds: int = 4,
                 decode: bool = True):
        super().__init__(peer_id, neighbours, layout=layout, limits=limits, liveness=liveness,
                         max_future_rounds=max_future_rounds, decode=decode)
        self.bind_endpoint = bind
        self.addresses = {int(j): ep for j, ep in neighbours.items() if int(j) != self.peer_id}
        self.security = security
        if security is None:
            sec.check_plaintext([bind, *self.addresses.values()], allow_plaintext_nonlocal)
        else:
            for j in self.addresses:
                security.key_of(j)  # fail at construction, not on the I/O thread, when a key is missing
        self.sndhwm, self.rcvhwm, self.linger_ms = int(sndhwm), int(rcvhwm), int(linger_s * 1000)
        self._ctx: zmq.Context | None = None
        self._auth = None
        self._router: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._dealers: dict[int, zmq.Socket] = {}
        self._send_lock = threading.Lock()  # DEALERs are shared by the main and the I/O thread; zmq is not thread-safe
        self._wake_addr = f"inproc://declora-wake-{id(self)}"
        self._wake_send: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_heard: dict[int, float] = {}
        self._last_ping: dict[int, float] = {}
        self._confirmed: set[int] = set()  # answered a HELLO/PING of ours since it last (re)appeared
        self._down: set[int] = set()  # was confirmed, then went silent or said BYE
        self._refusal_log = _RefusalLog(self.peer_id)

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "ZmqTransport":
        if self._started:
            return self
        self._ctx = zmq.Context()
        try:
            if self.security is not None:
                self._auth = sec.start_authenticator(self._ctx, self.security, self.addresses)
            self._router = self._make_router()
            for j, ep in sorted(self.addresses.items()):
                self._dealers[j] = self._make_dealer(j, ep)
            self._wake_send = self._ctx.socket(zmq.PAIR)
            self._wake_send.bind(self._wake_addr)
            wake_recv = self._ctx.socket(zmq.PAIR)
            wake_recv.connect(self._wake_addr)
        except Exception:
            self._teardown()
            raise
        self._started = True
        self._thread = threading.Thread(target=self._io_loop, args=(wake_recv,), name=f"declora-io-{self.peer_id}",
                                        daemon=True)
        self._thread.start()
        log.info("peer %d listening on %s (%s), neighbours %s", self.peer_id, self.endpoint,
                 "CURVE" if self.security else "plain text", list(self.neighbours))
        return self

    def _make_router(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.ROUTER)
        s.linger = 0
        s.rcvhwm = self.rcvhwm
        s.maxmsgsize = self.limits.max_message_bytes  # per frame: ZeroMQ disconnects a sender that exceeds it
        s.router_handover = 1  # a restarted peer takes its id back even if the old connection lingers
        if self.security is not None:
            sec.configure_server(s, self.security)
        self._monitor = s.get_monitor_socket(sum(_MONITOR_EVENTS))
        s.bind(self.bind_endpoint)
        self.endpoint = s.last_endpoint.decode()
        return s

    def _make_dealer(self, j: int, endpoint: str) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        s.routing_id = str(self.peer_id).encode()
        s.linger = self.linger_ms
        s.sndhwm = self.sndhwm
        s.rcvhwm = 4  # nobody should send to a DEALER; do not let anyone fill memory that way
        s.sndtimeo = 0
        s.immediate = 1  # no queueing towards a neighbour that is not connected: send fails fast instead
        s.reconnect_ivl = 100
        s.reconnect_ivl_max = int(max(200, self.liveness.heartbeat_interval_s * 1000))
        if self.security is not None:
            sec.configure_client(s, self.security, j)
        s.connect(endpoint)
        return s

    def close(self) -> None:
        """Say BYE to every neighbour, stop the I/O thread, close the sockets (lingering `linger_s` for queued
        messages)."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            for j in self.neighbours:
                self._send_control(j, Kind.BYE)
            self._stop.set()
            try:
                with self._send_lock:
                    self._wake_send.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            if self._thread is not None:
                self._thread.join(timeout=10)
        self._teardown()
        with self._cv:
            self._cv.notify_all()

    def _teardown(self) -> None:
        with self._send_lock:
            for s in [*self._dealers.values(), self._router, self._monitor, self._wake_send]:
                if s is not None:
                    s.close()
            self._dealers.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # ---- sending ---------------------------------------------------------------------------------------------------------
    def _send_frames(self, to: int, frames: list) -> bool:
        with self._send_lock:
            sock = self._dealers.get(to)
            if sock is None:
                return False
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                return False
            except zmq.ZMQError as e:
                log.warning("peer %d: send to %d failed: %s", self.peer_id, to, e)
                return False

    # ---- liveness -------------------------------------------------------------------------------------------------------
    # A neighbour is live when (1) it has answered one of our HELLOs or PINGs since it (re)appeared, which proves
    # both directions work (our DEALER reached its ROUTER, its DEALER reached ours; hearing from it alone does not
    # mean our sends get through: DEALERs connect asynchronously and IMMEDIATE refuses to queue meanwhile), and
    # (2) we heard anything from it within the last `missed_intervals_before_down` intervals.
    def _live_set(self) -> set[int]:
        now = time.monotonic()
        limit = self.liveness.down_after_s
        return {j for j in self._confirmed if now - self._last_heard.get(j, -math.inf) <= limit}

    def _down_set(self) -> set[int]:
        with self._cv:
            return set(self._down)

    def _heard(self, sender: int, msg: Message) -> None:
        self._last_heard[sender] = time.monotonic()
        if msg.kind == Kind.PONG or (msg.kind == Kind.HELLO and msg.body.get("reply")):
            if sender not in self._confirmed:
                self._confirmed.add(sender)
                if sender in self._down:
                    self._down.discard(sender)
                    log.info("peer %d: neighbour %d is up again", self.peer_id, sender)
                self._cv.notify_all()

    def _said_bye(self, sender: int) -> None:
        self._confirmed.discard(sender)
        if sender not in self._down:
            self._down.add(sender)
            self._c_down[sender] += 1
            log.info("peer %d: neighbour %d said bye", self.peer_id, sender)

    def poll_liveness(self) -> None:
        """Mark neighbours down that have been silent too long; HELLO the unconfirmed ones and PING the quiet ones
        (the I/O thread calls this every quarter interval; calling it by hand is harmless)."""
        now = time.monotonic()
        interval = self.liveness.heartbeat_interval_s
        to_ping = []
        with self._cv:
            changed = False
            for j in self.neighbours:
                silent = now - self._last_heard.get(j, -math.inf)
                if j in self._confirmed and silent > self.liveness.down_after_s:
                    self._confirmed.discard(j)
                    self._down.add(j)
                    self._c_down[j] += 1
                    changed = True
                    log.warning("peer %d: neighbour %d is down (silent for %.1f s)", self.peer_id, j, silent)
                if now - self._last_ping.get(j, -math.inf) < interval:
                    continue
                if j not in self._confirmed:
                    to_ping.append((j, Kind.HELLO))  # (re)start: it learns our endpoint/layout, its reply confirms
                elif silent >= interval:
                    to_ping.append((j, Kind.PING))
                else:
                    continue
                self._last_ping[j] = now
            if changed:
                self._cv.notify_all()
        for j, kind in to_ping:
            self._send_control(j, kind, self._hello_body() if kind == Kind.HELLO else None)

    # ---- the I/O thread ------------------------------------------------------------------------------------------------
    def _io_loop(self, wake: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        tick = min(0.1, self.liveness.heartbeat_interval_s / 4)
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                timeout_ms = max(0, int((next_tick - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout_ms))
                if self._stop.is_set():
                    break
                if self._router in events:
                    self._drain_router()
                if self._monitor in events:
                    self._drain_monitor()
                if time.monotonic() >= next_tick:
                    self._drain_dealers()
                    self.poll_liveness()
                    next_tick = time.monotonic() + tick
        except Exception:  # noqa: BLE001 - a bug here must not kill liveness silently
            log.exception("peer %d: I/O thread failed", self.peer_id)
        finally:
            wake.close()

    def _drain_router(self, budget: int = 256) -> None:
        for _ in range(budget):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = self._identity(frames)
            self._receive(identity, frames[1:] if len(frames) > 1 else [])

    def _identity(self, frames: list) -> int | None:
        """Who sent this: the CURVE-authenticated peer id, or in plain text the DEALER's routing id."""
        if self.security is not None:
            try:
                user = frames[-1].get("User-Id")
            except (zmq.ZMQError, IndexError):
                return None
            return int(user) if user.isdigit() else None
        rid = bytes(frames[0].buffer)
        return int(rid) if 0 < len(rid) <= 10 and rid.isdigit() else None

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            name = _MONITOR_EVENTS.get(event["event"])
            if name:
                with self._cv:
                    self._c_events[name] += 1
                if name in ("auth_failed", "handshake_failed_protocol", "handshake_failed"):
                    self._refusal_log(name)

    def _drain_dealers(self) -> None:
        """Nobody should send to our DEALERs (replies come in through their DEALER to our ROUTER): discard."""
        n = 0
        with self._send_lock:
            for s in self._dealers.values():
                while s.poll(0):
                    s.recv_multipart(zmq.NOBLOCK)
                    n += 1
        if n:
            with self._cv:
                self._c_drop["unexpected_on_dealer"] += n


# ---- in-process twin ----------------------------------------------------------------------------------------------------
class InProcNetwork:
    """A hub of in-process transports: `net.transport(peer_id, neighbours)`; `kill(peer_id)` is a crash (no BYE)."""

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._lock = threading.Lock()
        self._peers: dict[int, InProcTransport] = {}

    def transport(self, peer_id: int, neighbours: Iterable[int], **kwargs) -> "InProcTransport":
        kwargs.setdefault("limits", self.limits)
        return InProcTransport(self, peer_id, neighbours, **kwargs)

    def _register(self, t: "InProcTransport") -> None:
        with self._lock:
            self._peers[t.peer_id] = t
        self._notify_all()

    def _unregister(self, t: "InProcTransport") -> None:
        with self._lock:
            if self._peers.get(t.peer_id) is t:
                del self._peers[t.peer_id]
        self._notify_all()

    def kill(self, peer_id: int) -> None:
        """Take a peer off the network without a BYE, as a SIGKILL would."""
        with self._lock:
            t = self._peers.pop(peer_id, None)
        if t is not None:
            t._closed = True
        self._notify_all()

    def is_up(self, peer_id: int) -> bool:
        with self._lock:
            return peer_id in self._peers

    def get(self, peer_id: int) -> "InProcTransport | None":
        with self._lock:
            return self._peers.get(peer_id)

    def deliver_raw(self, to: int, sender_identity: int | None, frames: Sequence) -> None:
        """Hand raw frames to peer `to` as if the link layer said they came from `sender_identity`."""
        t = self.get(to)
        if t is not None:
            t._receive(sender_identity, [bytes(memoryview(f).cast("B")) for f in frames])

    def _notify_all(self) -> None:
        with self._lock:
            peers = list(self._peers.values())
        for t in peers:
            with t._cv:
                t._cv.notify_all()


class InProcTransport(Transport):
    """The same interface in one process. Frames are copied to bytes on the way, as a socket would, and go through
    the same validation. Liveness is exact: a neighbour is live while its transport is open on the network."""

    def __init__(self, network: InProcNetwork, peer_id: int, neighbours: Iterable[int], **kwargs):
        super().__init__(peer_id, neighbours, **kwargs)
        self.network = network
        self.endpoint = f"inproc://peer-{peer_id}"

    def start(self) -> "InProcTransport":
        if not self._started:
            self._started = True
            self.network._register(self)
            for j in self.neighbours:
                if self.network.is_up(j):
                    self._send_control(j, Kind.HELLO, self._hello_body())
        return self

    def close(self) -> None:
        if self._closed or not self._started:
            self._closed = True
            return
        for j in self.neighbours:
            if self.network.is_up(j):
                self._send_control(j, Kind.BYE)
        self._closed = True
        self.network._unregister(self)

    def _send_frames(self, to: int, frames: list) -> bool:
        if self._closed:
            return False
        target = self.network.get(to)
        if target is None:
            return False
        target._receive(self.peer_id, [bytes(memoryview(f).cast("B")) for f in frames])
        return True

    def _live_set(self) -> set[int]:
        return {j for j in self.neighbours if self.network.is_up(j)}

    def _down_set(self) -> set[int]:
        return {j for j in self.neighbours if not self.network.is_up(j)}
