"""The transport interface within one process, for tests of the peer loop and for a peer with nobody to talk to.

`InProcTransport` (from an `InProcNetwork`) runs every message through the same `to_frames`/`from_frames` and the same
inbox logic as `ZmqTransport`, without sockets.
"""
from __future__ import annotations

import threading
from typing import Iterable, Sequence

from declora.wire.protocol import Kind, Limits
from declora.wire.transport import Transport


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
