"""Fault injection on the send path of any transport (issue 10), for tests and benchmarks: per link (sender ->
receiver) drop, added delay (fixed + uniform jitter), duplication and reordering, and round-scheduled cuts of the
graph (partitions that heal).

`Transport._send_counted` hands every outgoing message to `Chaos.send` when the transport has one (`attach`), so
ZeroMQ and in-process transports get it alike; the sender's own counters see a message as sent whatever chaos
does with it, as on a lossy network. What it decides is reproducible: each link has its own random streams, seeded
from the run seed, the sender and the receiver, one for round messages and one for control messages, and every
message draws the same five numbers, so the n-th round message on a link meets the same fate in every run with the
same seed (control traffic depends on timing, which is why it has a stream of its own).

Delayed and held-back messages are released by one timer thread per transport, started on first need. It never
blocks the sender and never sends after the transport says BYE or is closed: BYE discards what is still pending
(counted). BYE itself is exempt from random chaos (a lost BYE only turns a clean leave into a silent one, which
heartbeats already cover, and a delayed BYE would have to leave after the close); a cut drops it like everything
else, as a real partition would.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace

import msgpack

from declora.wire.protocol import TENSOR_KINDS, Kind

log = logging.getLogger("declora.wire.chaos")
ANY = -1  # a link end written `*`: every peer


class ChaosSpecError(ValueError):
    """A --chaos or --cut string that cannot be parsed; the message says what is wrong (one line)."""


@dataclass(frozen=True)
class LinkChaos:
    """What happens on one link: probabilities in [0, 1], times in seconds."""

    drop: float = 0.0  # lose the message
    delay: float = 0.0  # added to every message
    jitter: float = 0.0  # plus uniform [0, jitter)
    dup: float = 0.0  # send a second copy (with its own delay)
    reorder: float = 0.0  # hold the message back until the next one on the link has left, or `hold` passed
    hold: float = 1.0  # the longest a held-back message waits

    def active(self) -> bool:
        return any((self.drop, self.delay, self.jitter, self.dup, self.reorder))


PROBABILITIES = ("drop", "dup", "reorder")
KEYS = tuple(f.name for f in fields(LinkChaos))


@dataclass(frozen=True)
class Cut:
    """During the sender's rounds `start` .. `stop` - 1, every message between side `a` and side `b` is lost
    (an empty `b`: everyone not in `a`)."""

    a: frozenset
    b: frozenset
    start: int
    stop: int

    def separates(self, i: int, j: int, round: int) -> bool:
        if not self.start <= round < self.stop:
            return False
        side_b = (lambda p: p in self.b) if self.b else (lambda p: p not in self.a)
        return (i in self.a and side_b(j)) or (j in self.a and side_b(i))


@dataclass(frozen=True)
class ChaosSpec:
    """The parsed --chaos and --cut: the all-links behaviour, per-link overrides (applied in order; a link part sets
    only the keys it names), and the cuts."""

    default: LinkChaos = LinkChaos()
    links: tuple = ()  # ((sender, receiver, directed), {key: value}), ANY for `*`
    cuts: tuple = ()

    def link(self, i: int, j: int) -> LinkChaos:
        out = self.default
        for (a, b, directed), values in self.links:
            fwd = a in (ANY, i) and b in (ANY, j)
            if fwd or (not directed and a in (ANY, j) and b in (ANY, i)):
                out = replace(out, **values)
        return out

    def cut(self, i: int, j: int, round: int) -> bool:
        return any(c.separates(i, j, round) for c in self.cuts)

    def active(self) -> bool:
        return bool(self.cuts) or self.default.active() or any(LinkChaos(**v).active() for _, v in self.links)

    def peer_ids(self) -> set[int]:
        ids = {p for (a, b, _), _v in self.links for p in (a, b) if p != ANY}
        return ids | {p for c in self.cuts for p in c.a | c.b}


def _number(key: str, text: str) -> float:
    t = text.strip().lower()
    scale = 1.0
    if key not in PROBABILITIES and t.endswith("ms"):
        t, scale = t[:-2], 1e-3
    elif key not in PROBABILITIES and t.endswith("s"):
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise ChaosSpecError(f"{key}={text!r} is not a number") from None
    if key in PROBABILITIES and not 0.0 <= value <= 1.0:
        raise ChaosSpecError(f"{key} is a probability in [0, 1], got {text}")
    if not value >= 0.0 or value == float("inf"):
        raise ChaosSpecError(f"{key} is a time in seconds >= 0 (e.g. 0.2 or 200ms), got {text}")
    if key == "hold" and value == 0.0:
        raise ChaosSpecError("hold must be > 0 seconds")
    return value


def _values(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in KEYS:
            raise ChaosSpecError(f"{item.strip()!r}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
        out[key] = _number(key, value)
    return out


def _peer(text: str) -> int:
    t = text.strip()
    if t == "*":
        return ANY
    if not t.isdigit():
        raise ChaosSpecError(f"{text.strip()!r} is not a peer id (or *)")
    return int(t)


def parse_chaos(text: str) -> ChaosSpec:
    """`KEY=V,...` for every link, then `;LINK:KEY=V,...` overrides; LINK is `I-J` (both ways) or `I>J` (I sends to
    J), I or J may be `*`. Keys: drop, dup, reorder (probabilities), delay, jitter, hold (seconds, or with ms)."""
    default, links = LinkChaos(), []
    for n, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        head, colon, rest = part.partition(":")
        if not colon:
            if n != 0:
                raise ChaosSpecError(f"{part!r}: a part after the first names its link, e.g. 0-3:drop=1")
            default = LinkChaos(**_values(part))
            continue
        directed = ">" in head
        ends = head.split(">" if directed else "-")
        if len(ends) != 2:
            raise ChaosSpecError(f"{head!r}: a link is I-J (both ways) or I>J (I sends to J), e.g. 0-3 or 2>*")
        links.append(((_peer(ends[0]), _peer(ends[1]), directed), _values(rest)))
    return ChaosSpec(default, tuple(links))


def _side(text: str) -> frozenset:
    ids: set[int] = set()
    for item in (x.strip() for x in text.split(",")):
        lo, dash, hi = item.partition("-")
        if not (lo.isdigit() and (not dash or (hi.isdigit() and int(hi) >= int(lo)))):
            raise ChaosSpecError(f"{item!r}: a side is a comma list of peer ids or ranges, e.g. 0,1,2 or 0-3")
        ids |= set(range(int(lo), int(hi) + 1)) if dash else {int(lo)}
    return frozenset(ids)


def parse_cuts(text: str) -> tuple[Cut, ...]:
    """`A|B@START:STOP`, several joined by `;`: links between side A and side B are cut during the sender's rounds
    START .. STOP-1 (0-based, as the metrics' `round`); `A@START:STOP` cuts A off from everyone else."""
    cuts = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        sides, at, rounds = part.partition("@")
        start, colon, stop = rounds.partition(":")
        if not at or not colon or not start.strip().isdigit() or not stop.strip().isdigit():
            raise ChaosSpecError(f"{part!r}: expected SIDE|SIDE@START:STOP, e.g. 0,1|2,3@5:10 (rounds 5 to 9)")
        a_text, bar, b_text = sides.partition("|")
        a, b = _side(a_text), _side(b_text) if bar else frozenset()
        if a & b:
            raise ChaosSpecError(f"{part!r}: peers {sorted(a & b)} are on both sides")
        if int(stop) <= int(start):
            raise ChaosSpecError(f"{part!r}: STOP must be after START (rounds START to STOP-1 are cut)")
        cuts.append(Cut(a, b, int(start), int(stop)))
    return tuple(cuts)


def parse(chaos: str = "", cut: str = "") -> ChaosSpec:
    return replace(parse_chaos(chaos), cuts=parse_cuts(cut))


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    to: int = field(compare=False)
    frames: list = field(compare=False)
    held: bool = field(compare=False, default=False)  # released by the next message on its link, or at `due`


class Chaos:
    """The chaos of one transport's outgoing links (`attach` installs it)."""

    def __init__(self, transport, spec: ChaosSpec, seed: int = 0):
        self.t, self.spec, self.me = transport, spec, transport.peer_id
        self._seed = seed
        self._cv = threading.Condition()
        self._rngs: dict[tuple[int, bool], random.Random] = {}
        self._pending: list[_Pending] = []  # a heap by due time
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._inflight = 0  # batches taken off the heap and not yet sent
        self._closing = False
        self._c: Counter = Counter()
        self._by_kind: dict[str, Counter] = {}

    # ---- the send path ----------------------------------------------------------------------------------------------
    def send(self, to: int, frames: list) -> bool:
        """Send (now, later, twice or never) what the transport would have sent; True unless a send made now failed."""
        kind = _kind_of(frames)
        if kind == Kind.BYE:
            self._shut()
        now = time.monotonic()
        with self._cv:
            if self.spec.cut(self.me, to, self.t._round):
                self._count("cut", kind)
                return True
            if self._closing or kind == Kind.BYE:
                direct = [frames]
            else:
                direct = self._decide(to, frames, kind, now)
                if direct is None:
                    return True
            self._inflight += 1
        try:
            ok = self.t._send_frames(to, direct[0])
            for extra in direct[1:]:
                self.t._send_frames(to, extra)
            self._send_held(to)
        finally:
            self._done()
        return ok

    def _decide(self, to: int, frames: list, kind: Kind | None, now: float) -> list | None:
        """Draw this message's fate (lock held): the copies to send now (first: this one), or None when it was
        dropped or leaves later."""
        link = self.spec.link(self.me, to)
        rng = self._rng(to, kind in TENSOR_KINDS)
        u_drop, u_dup, u_reorder, u_jit1, u_jit2 = (rng.random() for _ in range(5))
        if u_drop < link.drop:
            self._count("dropped", kind)
            return None
        copies = [(frames, link.delay + u_jit1 * link.jitter, u_reorder < link.reorder)]
        if u_dup < link.dup:
            self._count("duplicated", kind)
            copies.append((frames, link.delay + u_jit2 * link.jitter, False))
        now_list: list = []
        for n, (f, delay, hold) in enumerate(copies):
            if hold:
                self._count("reordered", kind)
                self._push(now + max(delay, link.hold), to, f, held=True)
            elif delay > 0:
                self._count("delayed", kind)
                self._push(now + delay, to, f)
            else:
                now_list.append(f)
        return now_list or None

    def _push(self, due: float, to: int, frames: list, held: bool = False) -> None:
        # A copy: the sender may reuse the buffers behind the frames once its send returns.
        frames = [bytes(memoryview(f).cast("B")) for f in frames]
        heapq.heappush(self._pending, _Pending(due, next(self._seq), to, frames, held))
        if self._thread is None:
            self._thread = threading.Thread(target=self._release_loop, name=f"declora-chaos-{self.me}", daemon=True)
            self._thread.start()
        self._cv.notify_all()

    def _send_held(self, to: int) -> None:
        """A message to `to` has left: what was held back on that link follows it."""
        with self._cv:
            held = [p for p in self._pending if p.held and p.to == to]
            if not held:
                return
            self._pending = [p for p in self._pending if not (p.held and p.to == to)]
            heapq.heapify(self._pending)
        for p in sorted(held):
            self.t._send_frames(to, p.frames)

    def _done(self) -> None:
        with self._cv:
            self._inflight -= 1
            self._cv.notify_all()

    # ---- the timer thread ------------------------------------------------------------------------------------------
    def _release_loop(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closing or self.t._closed:
                        self._discard()
                        self._thread = None
                        return
                    now = time.monotonic()
                    if self._pending and self._pending[0].due <= now:
                        batch = []
                        while self._pending and self._pending[0].due <= now:
                            batch.append(heapq.heappop(self._pending))
                        self._inflight += 1
                        break
                    wait = self._pending[0].due - now if self._pending else 0.2
                    self._cv.wait(min(wait, 0.2))  # and look at the transport's _closed every 0.2 s
            try:
                for p in batch:
                    if self.spec.cut(self.me, p.to, self.t._round):  # the cut began while it was on its way
                        with self._cv:
                            self._count("cut", None)
                        continue
                    if not self.t._send_frames(p.to, p.frames):
                        with self._cv:
                            self._c["late_send_failed"] += 1
                    if not p.held:
                        self._send_held(p.to)
            finally:
                self._done()

    def _discard(self) -> None:
        if self._pending:
            self._c["discarded_at_close"] += len(self._pending)
            self._pending.clear()

    def _shut(self) -> None:
        """BYE is on its way: nothing pending may follow it. Waits for a send the timer has already started."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._discard()
            self._cv.notify_all()
            while self._inflight:
                self._cv.wait(0.05)
        log.info("peer %d chaos: %s; receive drops: %s", self.me, json.dumps(self.counters(), sort_keys=True),
                 json.dumps(self.t.counters()["dropped"], sort_keys=True))

    # ---- counters ----------------------------------------------------------------------------------------------------
    def _rng(self, to: int, rounds: bool) -> random.Random:
        key = (to, rounds)
        if key not in self._rngs:
            self._rngs[key] = random.Random(f"declora-chaos:{self._seed}:{self.me}:{to}:{'round' if rounds else 'ctl'}")
        return self._rngs[key]

    def _count(self, what: str, kind: Kind | None) -> None:
        self._c[what] += 1
        self._by_kind.setdefault(kind.value if kind else "?", Counter())[what] += 1

    def counters(self) -> dict:
        """What chaos did: dropped (at random), cut (by a partition), delayed, duplicated, reordered, late sends that
        failed, and what a close discarded; the same by message kind."""
        with self._cv:
            out = {k: self._c.get(k, 0) for k in ("dropped", "cut", "delayed", "duplicated", "reordered",
                                                  "late_send_failed", "discarded_at_close")}
            out["pending"] = len(self._pending)
            out["by_kind"] = {k: dict(c) for k, c in sorted(self._by_kind.items())}
            return out


def _kind_of(frames: list) -> Kind | None:
    """The kind named in a message's header frame (None when it cannot be read: chaos treats it as control)."""
    try:
        return Kind(msgpack.unpackb(bytes(memoryview(frames[0]).cast("B")), raw=False).get("kind"))
    except (ValueError, TypeError, AttributeError, IndexError, msgpack.UnpackException):
        return None


def attach(transport, spec: ChaosSpec | None, seed: int = 0):
    """Put `spec`'s chaos on `transport`'s send path (nothing when the spec does nothing); returns the transport."""
    if spec is not None and spec.active():
        transport.chaos = Chaos(transport, spec, seed)
    return transport
