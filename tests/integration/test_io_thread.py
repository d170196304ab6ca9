"""The ZeroMQ transport's I/O thread never dies silently: a bug that escapes an I/O pass is counted and the loop
restarted (messages keep flowing); one that keeps coming back fails the transport, and the peer's next collect
raises TransportError instead of waiting out deadlines alone. Two real ZmqTransports on loopback, one process."""
from __future__ import annotations

import time

import pytest
import torch

from declora.core.factors import Adapter, LoraFactor
from declora.node.addressbook import free_loopback_ports
from declora.wire import zmq_transport
from declora.wire.adapter_messages import encode_adapter
from declora.wire.liveness import Liveness
from declora.wire.protocol import AdapterLayout, Kind, make_message
from declora.wire.transport import TransportError
from declora.wire.zmq_transport import ZmqTransport

pytestmark = pytest.mark.timeout(60)

ADAPTER = Adapter({"m": LoraFactor(torch.ones(2, 8), torch.ones(8, 2), 4.0)}, {})
LAYOUT = AdapterLayout.from_adapter(ADAPTER, equal_rank=True)


def pair():
    a, b = (f"tcp://127.0.0.1:{p}" for p in free_loopback_ports(2))
    live = Liveness(0.1, 20)
    return (ZmqTransport(0, a, {1: b}, layout=LAYOUT, liveness=live),
            ZmqTransport(1, b, {0: a}, layout=LAYOUT, liveness=live))


def message(sender: int, t: int):
    return make_message(Kind.FACTORS, sender, t, encode_adapter(ADAPTER, "fp32"))


def break_drain(transport: ZmqTransport, times: int) -> None:
    """Make the next `times` router drains raise, as a bug in the receive path would."""
    real = transport._drain_router
    left = [times]

    def flaky(*args, **kw):
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError("injected I/O bug")
        return real(*args, **kw)

    transport._drain_router = flaky


def test_a_failing_io_pass_is_counted_and_restarted():
    a, b = pair()
    break_drain(a, 2)
    with a, b:
        assert not a.wait_for_neighbours(10) and not b.wait_for_neighbours(10)
        for t in range(3):
            b.send(0, message(1, t))
            res = a.collect(t, Kind.FACTORS, {1}, deadline_s=10)
            assert list(res.received) == [1], t
        assert a.counters()["socket_events"]["io_thread_failed"] == 2


def test_an_io_thread_that_keeps_failing_fails_the_transport_loudly():
    a, b = pair()
    break_drain(a, 10**9)
    with a, b:
        b.wait_for_neighbours(10)
        deadline = time.monotonic() + 20
        while a._io_error is None and time.monotonic() < deadline:
            b.send(0, message(1, 0))  # every arrival makes the broken drain run and fail
            time.sleep(0.05)
        with pytest.raises(TransportError, match="I/O thread failed for good"):
            a.collect(0, Kind.FACTORS, {1}, deadline_s=5)
        assert a.counters()["socket_events"]["io_thread_failed"] == zmq_transport.IO_RESTARTS + 1
