"""The round inbox shared by every transport: send, collect and exchange rounds, the receive path, and counters.

A subclass moves frames (`zmq_transport.ZmqTransport` over ZeroMQ, `inproc.InProcTransport` within one process) and
says who is live; everything a peer receives goes through `_receive` here, so both validate and file messages the
same way. Nothing is assumed symmetric beyond "I hear from my neighbours": a parameter server is a peer whose
neighbours are all clients, and each client's only neighbour is the server.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from declora.wire.liveness import Liveness
from declora.wire.state_transfer import StateTransfer
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
from declora.wire.throttled_log import ThrottledLog

log = logging.getLogger("declora.wire.transport")


class TransportError(RuntimeError):
    """The transport can no longer move messages (its I/O thread failed for good)."""


@dataclass
class RoundResult:
    """What `collect` got: every neighbour's message for the round, who was expected but did not deliver, how long
    it waited."""

    received: dict[int, Message]
    missing: list[int]
    waited_s: float
    bytes_sent: int = 0  # this round's own message, once per neighbour it was handed to (no heartbeats)
    # seconds after the collect began that each received message arrived (0: it was already there)
    arrivals: dict[int, float] = field(default_factory=dict)
    # bounded staleness: a missing neighbour's message from an earlier round that came after that round's collect
    late: dict[int, Message] = field(default_factory=dict)
    awaited: int = 0  # neighbours the collect waited for when it began: expected, live, and not known to be behind


class Transport(StateTransfer):
    """The round inbox and counters shared by the ZeroMQ and in-process transports.

    Subclasses provide `start`, `close`, `_send_frames(to, frames) -> bool` and `_live_set() -> set[int]` (and may
    override the liveness hooks below), and feed every received multipart message to `_receive(identity, frames)`,
    where `identity` is who the link layer says sent it.
    """

    def __init__(self, peer_id: int, neighbours: Iterable[int], *, layout: AdapterLayout | None = None,
                 limits: Limits = Limits(), liveness: Liveness = Liveness(), max_future_rounds: int = 4,
                 max_stale_rounds: int = 0):
        self.peer_id = int(peer_id)
        self.neighbours: tuple[int, ...] = tuple(sorted({int(j) for j in neighbours} - {self.peer_id}))
        self.layout = layout
        self.limits = limits
        self.liveness = liveness
        self.max_future_rounds = int(max_future_rounds)
        # A round message up to this many rounds late is kept (the newest per sender) for the next collect to hand
        # out as `late`, unless that sender's message for a round as new was already handed out.
        self.max_stale_rounds = int(max_stale_rounds)
        self.endpoint = ""
        self._cv = threading.Condition()
        self._inbox: dict[tuple[Kind, int], dict[int, Message]] = {}
        self._arrival: dict[tuple[Kind, int], dict[int, float]] = {}  # when each inbox message was filed
        self._late: dict[Kind, dict[int, Message]] = {}  # per kind: each sender's newest late message
        self._handed: dict[Kind, dict[int, int]] = {}  # per kind: the newest round handed out per sender
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
        self._c_late = 0  # round messages kept as late (bounded staleness)
        self._io_error: BaseException | None = None  # set when the I/O thread has failed for good
        self._state: Message | None = None  # our latest STATE, answered to a neighbour's STATE_REQUEST
        self._state_sent: dict[int, float] = {}  # when we last answered each neighbour (at most once a second)
        self._states: dict[int, Message] = {}  # neighbours' STATE answers, the latest per sender
        self._drop_log = ThrottledLog(log, "peer %d dropped a message from %s: %s (%s) [%d so far]")
        self.chaos = None  # a wire.chaos.Chaos (tests, benchmarks): fault injection where frames leave

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
    def _check_io(self) -> None:
        if self._io_error is not None:
            raise TransportError(f"peer {self.peer_id}: the transport's I/O thread failed for good "
                                 f"({self._io_error!r}); this peer can no longer hear its neighbours") \
                from self._io_error

    def send(self, to: int, message: Message) -> bool:
        """Queue a message for neighbour `to`; never blocks. False when `to` is down or its queue is full."""
        self._check_io()
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
        ok = self._send_frames(to, frames) if self.chaos is None else self.chaos.send(to, frames)
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
    def collect(self, round: int, kind: Kind | str, expect: Iterable[int], deadline_s: float,
                quorum: tuple[int, float] | None = None) -> RoundResult:
        """Wait until every live peer in `expect` has delivered its `kind` message of `round`, or `deadline_s`
        seconds have passed, or (`quorum` = (k, grace_s)) grace_s seconds after the k-th of them arrived. Returns
        every neighbour's message of that round (expected or not); afterwards messages of this kind from this round
        or earlier are dropped as old."""
        kind = Kind(kind)
        expect = {int(j) for j in expect}
        start = time.monotonic()
        end = start + max(0.0, float(deadline_s))
        tick = min(0.25, self.liveness.heartbeat_interval_s / 2)
        awaited, quorum_met = None, quorum is None
        with self._cv:
            self._round = max(self._round, int(round))
            self._advance_floor(kind, int(round))
            while True:
                self._check_io()
                box = self._inbox.get((kind, round), {})
                waiting = (expect & self._live_set()) - set(box) - self._not_coming(round)
                if awaited is None:
                    awaited = len(waiting) + len(set(box) & expect)
                now = time.monotonic()
                if not quorum_met and len(set(box) & expect) >= quorum[0]:
                    quorum_met, end = True, min(end, now + quorum[1])
                if not waiting or now >= end:
                    break
                self._cv.wait(min(end - now, tick))
            received = self._inbox.pop((kind, round), {})
            arrived = self._arrival.pop((kind, round), {})
            self._floor[kind] = int(round) + 1
            late = self._take_late(kind, int(round), received)
        arrivals = {j: max(0.0, arrived.get(j, start) - start) for j in received}
        return RoundResult(dict(sorted(received.items())), sorted(expect - set(received)), time.monotonic() - start,
                           arrivals=arrivals, late=late, awaited=awaited or 0)

    def _take_late(self, kind: Kind, round: int, received: dict[int, Message]) -> dict[int, Message]:
        """The late messages this collect hands out (lock held): per sender not heard on time, its newest message
        from rounds round - max_stale_rounds .. round - 1 that is newer than anything of it handed out before.
        What is not handed out now never will be: a later round's message supersedes it."""
        handed = self._handed.setdefault(kind, {})
        late = {}
        for j, m in sorted(self._late.pop(kind, {}).items()):
            if j not in received and round - self.max_stale_rounds <= m.round < round \
                    and m.round > handed.get(j, -1):
                late[j] = m
                handed[j] = m.round
            else:
                self._count_drop("superseded", j, f"late round {m.round}, collected round {round}")
        for j in received:
            handed[j] = round
        return late

    def _not_coming(self, round: int) -> set[int]:
        """Neighbours whose message for `round` will not come (lock held): one known to be behind (its latest word
        is from before round - 1: restarted, or slow) mixes in once it catches up, and one already past this round
        sent its message for it before we could hear it (we are the late one). Nobody waits a deadline for them."""
        return {j for j, r in self._peer_round.items() if r < round - 1 or r > round}

    def exchange(self, round: int, message: Message, deadline_s: float,
                 quorum: tuple[int, float] | None = None) -> RoundResult:
        """Send this round's message to every live neighbour, then collect theirs (same kind and round)."""
        if message.round != round:
            raise ValueError(f"message is for round {message.round}, not {round}")
        sent = self.broadcast(message)
        result = self.collect(round, message.kind, set(self.neighbours), deadline_s, quorum)
        result.bytes_sent = message.nbytes * sum(sent.values())
        return result

    def _advance_floor(self, kind: Kind, floor: int) -> None:
        """Rounds below `floor` are over: drop what is buffered for them, and anything too far ahead (lock held)."""
        self._floor[kind] = max(self._floor.get(kind, floor), floor)
        floor = self._floor[kind]
        for k, r in [key for key in self._inbox if key[0] == kind]:
            if r < floor or r > floor + self.max_future_rounds:
                reason = "old_round" if r < floor else "future_round"
                self._arrival.pop((k, r), None)
                for sender in self._inbox.pop((k, r)):
                    self._count_drop(reason, sender, f"round {r} buffered, now at {floor}")

    def set_round(self, round: int) -> None:
        """The round this peer is at, before its first exchange (a resumed peer): HELLOs and PINGs say it, so that
        neighbours do not take a resumed peer for one that is behind. A peer that jumps ahead mid-run (a straggler
        rejoining) also moves its round floors there: what is buffered for the skipped rounds is over, and the
        neighbours' messages for the rounds it now runs must fit the window of future rounds."""
        with self._cv:
            self._round = int(round)
            for kind in list(self._floor):
                self._advance_floor(kind, int(round))

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
        """Bytes and messages per neighbour, drops by reason, down events, what chaos did (with chaos); JSON-ready
        apart from int keys."""
        chaos = {} if self.chaos is None else {"chaos": self.chaos.counters()}
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
                "late_kept": self._c_late,
                "sent": sent,
                "received": recv,
                "dropped": dict(self._c_drop),
                "went_down": dict(self._c_down),
                "socket_events": dict(self._c_events),
                **chaos,
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
        self._drop_log(reason, self.peer_id, sender, reason, detail)

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
        if msg.kind == Kind.STATE:
            self._file_state(identity, msg)
            return
        if msg.kind in TENSOR_KINDS:
            self._file_round_message(identity, msg)
            return
        with self._cv:
            if msg.kind == Kind.HELLO:  # a (re)started neighbour: its round starts again from what it says now
                self._peer_round.pop(identity, None)
            self._count_received(identity, msg)
            if msg.kind == Kind.HELLO:
                self._hello[identity] = msg.body
            if msg.kind == Kind.BYE:
                self._said_bye(identity)
            self._cv.notify_all()
        if msg.kind == Kind.PING:
            self._send_control(identity, Kind.PONG)
        elif msg.kind == Kind.STATE_REQUEST:
            self._answer_state_request(identity)
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
        if floor is not None and msg.round < floor and not self._may_be_late(sender, msg, floor):
            return "old_round", f"{msg.kind.value} round {msg.round}, already at round {floor}"
        if floor is not None and msg.round > floor + self.max_future_rounds:
            return "future_round", f"{msg.kind.value} round {msg.round}, only up to {floor + self.max_future_rounds} kept"
        if sender in self._inbox.get((msg.kind, msg.round), {}):
            return "duplicate", f"second {msg.kind.value} for round {msg.round}"
        return None

    def _may_be_late(self, sender: int, msg: Message, floor: int) -> bool:
        """A message for a round already collected is kept as late when it is within the staleness bound and newer
        than whatever of its sender was handed out or is already kept (lock held)."""
        if msg.round < floor - self.max_stale_rounds:
            return False
        if msg.round <= self._handed.get(msg.kind, {}).get(sender, -1):
            return False
        kept = self._late.get(msg.kind, {}).get(sender)
        return kept is None or msg.round > kept.round

    def _file_round_message(self, sender: int, msg: Message) -> None:
        with self._cv:
            self._count_received(sender, msg)  # a valid envelope from this neighbour: it is alive
            problem = self._round_problem(sender, msg)
            if problem:
                self._count_drop(problem[0], sender, problem[1])
                self._cv.notify_all()
                return
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
            floor = self._floor.get(msg.kind)
            if floor is not None and msg.round < floor:  # late: the newest per sender waits for the next collect
                self._late.setdefault(msg.kind, {})[sender] = msg
                self._c_late += 1
                self._cv.notify_all()
                return
            self._inbox.setdefault((msg.kind, msg.round), {})[sender] = msg
            self._arrival.setdefault((msg.kind, msg.round), {})[sender] = time.monotonic()
            self._evict_excess(msg.kind, sender)
            self._cv.notify_all()

    def _evict_excess(self, kind: Kind, sender: int) -> None:
        """Per-sender buffers: before the first collect there is no floor, so a sender keeps at most
        max_future_rounds + 1 rounds buffered and a flood pushes out only its own oldest ones, never another
        neighbour's (lock held). With a floor, `_round_problem` bounds every sender the same way."""
        rounds = sorted(r for (k, r), box in self._inbox.items() if k == kind and sender in box)
        for r in rounds[: max(0, len(rounds) - self.max_future_rounds - 1)]:
            box = self._inbox[(kind, r)]
            del box[sender]
            self._arrival.get((kind, r), {}).pop(sender, None)
            if not box:
                del self._inbox[(kind, r)]
                self._arrival.pop((kind, r), None)
            self._count_drop("evicted", sender, f"round {r} pushed out by its newer rounds")
