"""Catch-up's state transfer, part of every transport: a peer publishes its STATE (its adapter after its last round)
and answers neighbours' STATE_REQUESTs with it, at most once a second per neighbour (a flood of requests is dropped
and counted); a peer that is behind asks with `request_state` and gets the answers, validated like round messages.

A mixin of `transport.Transport`: it uses the transport's lock (`_cv`), counters and send path.
"""
from __future__ import annotations

import time
from typing import Iterable

from declora.wire.protocol import Kind, Message, ProtocolError, decode_message, to_frames


class StateTransfer:
    # ---- asking and answering ------------------------------------------------------------------------------------
    def publish_state(self, message: Message) -> None:
        """The STATE message to answer neighbours' STATE_REQUESTs with (the peer's adapter after its last round)."""
        if message.kind != Kind.STATE:
            raise ValueError(f"publish_state takes a {Kind.STATE.value} message, not {message.kind.value}")
        with self._cv:
            self._state = message

    def request_state(self, timeout_s: float, which: Iterable[int] | None = None) -> dict[int, Message]:
        """Ask live neighbours (default: all live) for their state; wait until at least one answered or `timeout_s`
        passed, then a moment more for the others. Returns the answers by sender (decoded, layout-checked)."""
        targets = sorted(self.live_neighbours() if which is None else set(which))
        with self._cv:
            self._states.clear()
        for j in targets:
            self._send_control(j, Kind.STATE_REQUEST)
        end = time.monotonic() + timeout_s
        with self._cv:
            while not self._states and time.monotonic() < end:
                self._cv.wait(min(0.1, max(0.0, end - time.monotonic())))
            grace = time.monotonic() + min(0.5, timeout_s)
            while len(self._states) < len(targets) and time.monotonic() < min(grace, end):
                self._cv.wait(0.05)
            return dict(self._states)

    def _answer_state_request(self, sender: int) -> None:
        with self._cv:
            state, last = self._state, self._state_sent.get(sender, -1e9)
            if state is None or time.monotonic() - last < 1.0:  # nothing yet, or asked again too soon: a flood
                if state is not None:
                    self._count_drop("state_request_flood", sender, "answered less than a second ago")
                return
            self._state_sent[sender] = time.monotonic()
        self._send_counted(sender, to_frames(state), state.nbytes)

    def _file_state(self, sender: int, msg: Message) -> None:
        with self._cv:
            self._count_received(sender, msg)
        try:  # outside the lock, as for round messages
            decode_message(msg)
        except ProtocolError as e:
            self._drop(e.reason, sender, str(e))
            return
        with self._cv:
            self._states[sender] = msg
            self._cv.notify_all()
