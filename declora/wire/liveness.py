"""Who among a peer's neighbours is live, and whom to HELLO or PING next.

A neighbour is live when (1) it has answered one of our HELLOs or PINGs since it (re)appeared, which proves both
directions work (our DEALER reached its ROUTER, its DEALER reached ours; hearing from it alone does not mean our
sends get through: DEALERs connect asynchronously and IMMEDIATE refuses to queue meanwhile), and (2) we heard
anything from it within the last `missed_intervals_before_down` intervals.

`NeighbourLiveness` is only the bookkeeping, with the clock passed in so that it can be tested without sleeping;
the transport owns the lock around it, sends what it asks for, and counts and logs what it reports.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from declora.wire.protocol import Kind

UP = "up"  # first confirmation of a neighbour
BACK = "back"  # confirmed again after it had gone down


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


class NeighbourLiveness:
    """Last heard, confirmed, down, and last contacted, per neighbour. Not thread-safe: the caller holds a lock."""

    def __init__(self, neighbours: Iterable[int], settings: Liveness = Liveness(),
                 clock: Callable[[], float] = time.monotonic):
        self.neighbours = tuple(sorted(neighbours))
        self.settings = settings
        self.clock = clock
        self.last_heard: dict[int, float] = {}
        self.last_contacted: dict[int, float] = {}
        self.confirmed: set[int] = set()  # answered a HELLO/PING of ours since it last (re)appeared
        self.down: set[int] = set()  # was confirmed, then went silent or said BYE

    def live(self) -> set[int]:
        now = self.clock()
        limit = self.settings.down_after_s
        return {j for j in self.confirmed if now - self.last_heard.get(j, -math.inf) <= limit}

    def heard(self, peer: int, *, answer: bool) -> str | None:
        """`peer` sent something valid; `answer`: a PONG or a HELLO reply, which confirms the link both ways.
        Returns UP or BACK when this confirmed `peer` anew, else None."""
        self.last_heard[peer] = self.clock()
        if not answer or peer in self.confirmed:
            return None
        self.confirmed.add(peer)
        if peer in self.down:
            self.down.discard(peer)
            return BACK
        return UP

    def said_bye(self, peer: int) -> bool:
        """`peer` is leaving; True when that takes it down (it was not down already)."""
        self.confirmed.discard(peer)
        if peer in self.down:
            return False
        self.down.add(peer)
        return True

    def poll(self) -> tuple[list[tuple[int, float]], list[tuple[int, Kind]]]:
        """Take down the confirmed neighbours silent for too long, and pick whom to contact now: a HELLO for an
        unconfirmed one (it learns our endpoint and layout, its reply confirms it), a PING for a quiet confirmed one;
        at most one of either per neighbour and interval. Returns ([(peer, seconds silent) gone down], [(peer,
        kind) to send]), both in neighbour order."""
        now = self.clock()
        interval = self.settings.heartbeat_interval_s
        gone, contact = [], []
        for j in self.neighbours:
            silent = now - self.last_heard.get(j, -math.inf)
            if j in self.confirmed and silent > self.settings.down_after_s:
                self.confirmed.discard(j)
                self.down.add(j)
                gone.append((j, silent))
            if now - self.last_contacted.get(j, -math.inf) < interval:
                continue
            if j not in self.confirmed:
                contact.append((j, Kind.HELLO))
            elif silent >= interval:
                contact.append((j, Kind.PING))
            else:
                continue
            self.last_contacted[j] = now
        return gone, contact
