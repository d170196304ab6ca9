"""The Harmony pattern over ZeroMQ: one ROUTER for everything inbound, one DEALER per neighbour.

The DEALERs' routing id is this peer's id (DESIGN.md section 2). A background I/O thread owns the receiving side: it
validates every message through `Transport._receive`, answers PINGs, pings quiet neighbours and marks them down
after `missed_intervals_before_down` silent intervals (`liveness.NeighbourLiveness`), so liveness keeps working
while the main thread trains. The main thread sends (never blocking: a full queue or a missing connection returns
False) and collects rounds.
"""
from __future__ import annotations

import logging
import math
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from declora.wire import security as sec
from declora.wire.liveness import BACK, Liveness, NeighbourLiveness
from declora.wire.protocol import PACK_ALIGN, AdapterLayout, Kind, Limits, Message
from declora.wire.throttled_log import ThrottledLog
from declora.wire.transport import Transport

log = logging.getLogger("declora.wire.zmq_transport")
IO_RESTARTS = 3  # restarts of the I/O loop after an unexpected error, before the transport counts as failed

_MONITOR_EVENTS = {
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
}


def max_frame_bytes(layout: AdapterLayout, limits: Limits) -> int:
    """The largest frame a valid message of `layout` can have: the header, or a payload frame holding at most every
    tensor in float32 (the widest codec) with packing padding. ZeroMQ refuses a bigger frame before buffering it
    (MAXMSGSIZE), so a hostile frame costs the receiver at most this. ZeroMQ has no limit on the number of frames of
    one message, though: it buffers a whole multipart message before handing it over, so a message of many frames
    that each fit costs up to (frames x this) until the protocol check drops it."""
    entries, tensors = 0, 2 * len(layout.modules) + len(layout.dense)
    for m in layout.modules.values():
        entries += (limits.max_rank if m.max_rank is None else m.max_rank) * (m.in_features + m.out_features)
    entries += sum(math.prod(shape) for shape in layout.dense.values())
    payload = 4 * entries + tensors * 4 * PACK_ALIGN
    header = 4096 + tensors * (512 + limits.max_key_len)
    return min(limits.max_message_bytes, max(payload, header))


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
                 max_stale_rounds: int = 0):
        super().__init__(peer_id, neighbours, layout=layout, limits=limits, liveness=liveness,
                         max_future_rounds=max_future_rounds, max_stale_rounds=max_stale_rounds)
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
        self._alive = NeighbourLiveness(self.neighbours, liveness)
        self._refusal_log = ThrottledLog(
            log, "peer %d refused a connection: %s (wrong key, unknown key or no CURVE) [%d so far]")

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
        # Per frame (ZeroMQ has no limit on a whole multipart message): a sender whose frame is larger than a valid
        # message of our layout could have is disconnected before that frame is buffered.
        s.maxmsgsize = max_frame_bytes(self.layout, self.limits) if self.layout else self.limits.max_message_bytes
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

    # ---- liveness (the bookkeeping is liveness.NeighbourLiveness; the lock, the counters and the log are here) ------
    def _live_set(self) -> set[int]:
        return self._alive.live()

    def _down_set(self) -> set[int]:
        with self._cv:
            return set(self._alive.down)

    def _heard(self, sender: int, msg: Message) -> None:
        answer = msg.kind == Kind.PONG or (msg.kind == Kind.HELLO and bool(msg.body.get("reply")))
        change = self._alive.heard(sender, answer=answer)
        if change is not None:
            if change == BACK:
                log.info("peer %d: neighbour %d is up again", self.peer_id, sender)
            self._cv.notify_all()

    def _said_bye(self, sender: int) -> None:
        if self._alive.said_bye(sender):
            self._c_down[sender] += 1
            log.info("peer %d: neighbour %d said bye", self.peer_id, sender)

    def poll_liveness(self) -> None:
        """Mark neighbours down that have been silent too long; HELLO the unconfirmed ones and PING the quiet ones
        (the I/O thread calls this every quarter interval; calling it by hand is harmless)."""
        with self._cv:
            gone, contact = self._alive.poll()
            for j, silent in gone:
                self._c_down[j] += 1
                log.warning("peer %d: neighbour %d is down (silent for %.1f s)", self.peer_id, j, silent)
            if gone:
                self._cv.notify_all()
        for j, kind in contact:
            self._send_control(j, kind, self._hello_body() if kind == Kind.HELLO else None)

    # ---- the I/O thread ------------------------------------------------------------------------------------------------
    def _io_loop(self, wake: zmq.Socket) -> None:
        """Run the I/O passes; a bug that escapes one is logged, counted (`io_thread_failed`) and the loop restarted,
        up to IO_RESTARTS times. After that the transport is failed: the main thread's next send or collect raises
        TransportError, so the peer stops loudly instead of training on alone without hearing anyone."""
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._io_pass(wake)
                    return
                except Exception as e:  # noqa: BLE001 - a bug here must not kill liveness silently
                    failures += 1
                    log.exception("peer %d: I/O thread failed (%d of at most %d restarts)", self.peer_id, failures,
                                  IO_RESTARTS)
                    with self._cv:
                        self._c_events["io_thread_failed"] += 1
                        if failures > IO_RESTARTS:
                            self._io_error = e
                            self._cv.notify_all()
                            return
        finally:
            wake.close()

    def _io_pass(self, wake: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        tick = min(0.1, self.liveness.heartbeat_interval_s / 4)
        next_tick = time.monotonic()
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
