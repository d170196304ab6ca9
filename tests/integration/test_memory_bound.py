"""A hostile neighbour's 300-frame message costs the receiver at most one frame of its layout's size, not the
message: the ROUTER's per-frame limit (MAXMSGSIZE) comes from the layout (`zmq_transport.max_frame_bytes`), and
ZeroMQ drops the connection at the first oversize frame, before buffering it. The receiver is its own process, so
its peak memory (VmHWM) is its own."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import zmq

pytestmark = pytest.mark.timeout(120)

RECEIVER = r"""
import json, sys, time
import torch
from declora.core.factors import Adapter, LoraFactor
from declora.wire.protocol import AdapterLayout
from declora.wire.zmq_transport import ZmqTransport, max_frame_bytes
def peak_kb():
    # VmHWM: this process image's own peak. ru_maxrss would include the parent's (pytest's) peak from before exec.
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])
mine = Adapter({f"m{i}": LoraFactor(torch.zeros(4, 64), torch.zeros(64, 4), 8.0) for i in range(4)}, {})
layout = AdapterLayout.from_adapter(mine, equal_rank=True)
layout = layout if sys.argv[1] == "layout" else None
with ZmqTransport(0, "tcp://127.0.0.1:*", {1: "tcp://127.0.0.1:9"}, layout=layout) as t:
    limit = max_frame_bytes(layout, t.limits) if layout else t.limits.max_message_bytes
    before = peak_kb()  # before the sender can know where to send
    print(json.dumps({"endpoint": t.endpoint, "frame_limit": limit}), flush=True)
    sys.stdin.readline()  # the sender is done
    time.sleep(2.0)
    after = peak_kb()
    c = t.counters()
    print(json.dumps({"peak_kb_before": before, "peak_kb_after": after, "dropped": c["dropped"],
                      "events": c["socket_events"]}), flush=True)
"""


def send_flood(endpoint: str, frames: int, frame_bytes: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.routing_id = b"1"  # a neighbour's id: plain text on loopback takes it at its word
    s.linger = 2000
    s.connect(endpoint)
    time.sleep(0.3)
    payload = bytes(frame_bytes)
    s.send_multipart([payload] * frames, copy=False)  # the same buffer 300 times: the sender holds one frame
    time.sleep(1.0)
    s.close()
    ctx.term()


@pytest.mark.parametrize("layout,frame_bytes", [("layout", 1 << 20), ("layout", "just under the limit"),
                                                ("none", 1 << 20)], ids=["oversize", "under-limit", "no-layout"])
def test_a_300_frame_message_costs_at_most_the_frame_limit_per_frame(layout, frame_bytes):
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, layout], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        hello = json.loads(proc.stdout.readline())
        limit = hello["frame_limit"]
        size = limit - 64 if frame_bytes == "just under the limit" else frame_bytes
        send_flood(hello["endpoint"], 300, size)
        proc.stdin.write("done\n")
        proc.stdin.flush()
        report = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    grown_mb = (report["peak_kb_after"] - report["peak_kb_before"]) / 1024
    total_mb = 300 * size / 2**20
    if layout == "none":
        # What the layout's limit prevents: without it (256 MB per frame) the whole 300 MB is buffered first.
        assert grown_mb > 0.8 * total_mb, report
    elif size > limit:
        # 300 MB sent; ZeroMQ refused the first frame and dropped the connection.
        assert grown_mb < 8, report
    else:
        # Frames that each fit: ZeroMQ buffers the whole multipart message (it has no limit on the number of frames),
        # so the receiver can hold up to 300 x the frame limit; then our validation drops it as malformed.
        assert grown_mb < total_mb + 8, report
        assert sum(report["dropped"].values()) >= 1, report
    print(f"frame {size} B (limit {limit} B): {total_mb:.1f} MB sent, receiver peak +{grown_mb:.1f} MB, {report}")
