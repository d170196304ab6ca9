"""One peer process of benchmarks/bench_scale.py (started by it; not meant to be run by hand).

    python benchmarks/scale_worker.py CONFIG.json

The config names this process's id, the parent's barrier endpoint and, per configuration (ring gossip, degree-4
gossip, parameter server), its endpoint, its neighbours' endpoints and its mixing row. For each configuration in
turn the worker opens a ZmqTransport, waits until its neighbours are live, then runs warm-up + timed rounds, each
started at a barrier that the parent releases for all processes at once. It writes its per-round timings and byte
counts to the config's `out` file and exits.

No training: the payload is a random Llama-2-7B-shaped adapter (r=16 on q_proj and v_proj of 32 layers), encoded
once with the int8 codec. A round is what a real round does after training:

- gossip: exchange the encoded adapter with every neighbour (transport.exchange), decode what arrived, mix with
  declora.aggregate.gossip using this peer's Metropolis row (renormalized over who was heard);
- server client: send an UPDATE (with its sample count) to the server, collect the AGGREGATE, decode it;
- server: collect every client's UPDATE, decode them, aggregate with declora.server.aggregate_updates ("fedit",
  data-share weights), encode the aggregate (int8) and send it to every client.

Every received message is validated by the transport against the receiver's AdapterLayout. The transport runs with
decode=False and the main thread decodes, so the decode + mix (or decode + aggregate + encode) CPU time can be
measured on its own (time.thread_time: CPU seconds of the main thread, which timesharing does not inflate).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import zmq  # noqa: E402

from declora import aggregate  # noqa: E402
from declora.factors import Adapter, LoraFactor  # noqa: E402
from declora.protocol import AdapterLayout, Kind, encode_adapter, make_message  # noqa: E402
from declora.server import aggregate_updates  # noqa: E402
from declora.topology import renormalize_row  # noqa: E402
from declora.transport import Liveness, ZmqTransport  # noqa: E402
from declora.wire import decode_received  # noqa: E402

LAYERS, RANK, HIDDEN, ALPHA = 32, 16, 4096, 32.0
CODEC = "int8"


def llama7b_adapter(seed: int) -> Adapter:
    """Llama-2-7B r=16 on q_proj and v_proj: 64 A (16 x 4096) and 64 B (4096 x 16), fp32."""
    g = torch.Generator().manual_seed(seed)
    return Adapter({f"base_model.model.model.layers.{layer}.self_attn.{m}":
                    LoraFactor(torch.randn(RANK, HIDDEN, generator=g) * 0.02,
                               torch.randn(HIDDEN, RANK, generator=g) * 0.01, ALPHA)
                    for layer in range(LAYERS) for m in ("q_proj", "v_proj")})


def byte_count(transport) -> tuple[int, int]:
    c = transport.counters()
    return c["bytes_sent_total"], c["bytes_received_total"]


class Barrier:
    """All processes wait until the parent has heard `ready` from every one, then it answers `go` to each."""

    def __init__(self, ctx: zmq.Context, endpoint: str, me: int):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.routing_id = str(me).encode()
        self.sock.linger = 1000
        self.sock.connect(endpoint)

    def wait(self, tag: str) -> float:
        self.sock.send_string(tag)
        reply = self.sock.recv_string()
        if reply != "go":
            raise SystemExit(f"parent said {reply!r} at {tag}")
        return time.monotonic()


def run_config(cfg: dict, conf: dict, barrier: Barrier, mine: Adapter | None, tensors, layout) -> dict:
    me = cfg["id"]
    role = conf["roles"][str(me)]  # "peer" | "client" | "server" | "idle"
    out = {"name": conf["name"], "role": role, "rounds": []}
    if role == "idle":  # e.g. the server process during the gossip configurations: only keeps the barriers
        barrier.wait(f"{conf['name']}:up")
        for r in range(cfg["warmup"] + cfg["rounds"]):
            barrier.wait(f"{conf['name']}:round{r}")
            barrier.wait(f"{conf['name']}:done{r}")
        barrier.wait(f"{conf['name']}:close")
        return out
    book = {int(k): v for k, v in conf["book"].items()}
    nbrs = [int(j) for j in conf["neighbours"][str(me)]]
    transport = ZmqTransport(me, book[me], {j: book[j] for j in nbrs}, layout=layout,
                             liveness=Liveness(1.0, cfg["missed_heartbeats"]), decode=False,
                             rcvhwm=max(64, 2 * len(nbrs)), linger_s=5.0).start()
    t0 = time.monotonic()
    missing = transport.wait_for_neighbours(cfg["start_timeout_s"])
    out["start_s"] = time.monotonic() - t0
    out["missing_at_start"] = sorted(missing)
    barrier.wait(f"{conf['name']}:up")
    row = {int(k): float(v) for k, v in conf.get("rows", {}).get(str(me), {}).items()}
    server = int(conf["server"]) if conf["kind"] == "server" else None
    samples = int(conf["samples"][str(me)]) if role == "client" else 0
    deadline = cfg["deadline_s"]
    for r in range(cfg["warmup"] + cfg["rounds"]):
        # Built before the round starts: a real peer encodes what it trained; here the payload is fixed.
        if role == "peer":
            msg = make_message(Kind.FACTORS, me, r, tensors)
        elif role == "client":
            msg = make_message(Kind.UPDATE, me, r, tensors, body={"samples": samples})
        s0, v0 = byte_count(transport)
        go = barrier.wait(f"{conf['name']}:round{r}")
        rec: dict = {"round": r, "warmup": r < cfg["warmup"], "go": go}
        if role in ("peer", "client"):
            rec["message_bytes"] = msg.nbytes
        if role == "peer":
            res = transport.exchange(r, msg, deadline)
            rec["received_at"] = time.monotonic()
            c0 = time.thread_time()
            got = decode_received(res.received, layout)
            weights = renormalize_row(row, me, heard=set(got))
            ids = [me, *sorted(got)]
            mixed = aggregate.gossip([mine if i == me else got[i] for i in ids], [weights[i] for i in ids])
            rec["done"] = time.monotonic()
            rec["compute_cpu_s"] = time.thread_time() - c0
            rec["heard"], rec["missing"] = len(got), list(res.missing)
            del got, mixed
        elif role == "client":
            transport.send(server, msg)
            res = transport.collect(r, Kind.AGGREGATE, {server}, deadline)
            rec["received_at"] = time.monotonic()
            c0 = time.thread_time()
            got = decode_received(res.received, layout)
            rec["done"] = time.monotonic()
            rec["compute_cpu_s"] = time.thread_time() - c0
            rec["heard"], rec["missing"] = len(got), list(res.missing)
            del got
        else:  # server
            clients = set(nbrs)
            res = transport.collect(r, Kind.UPDATE, clients, deadline)
            rec["received_at"] = time.monotonic()
            c0 = time.thread_time()
            updates = decode_received(res.received, layout)
            counts = {j: int(res.received[j].body["samples"]) for j in updates}
            replies = aggregate_updates("fedit", updates, counts, ALPHA)
            shared = next(iter(replies.values()))  # fedit: one aggregate for all
            enc, _ = encode_adapter(shared, CODEC, return_decoded=False)
            reply = make_message(Kind.AGGREGATE, me, r, enc)
            rec["compute_cpu_s"] = time.thread_time() - c0
            sent = transport.broadcast(reply, to=sorted(updates))
            rec["done"] = time.monotonic()
            rec["send_failed"] = sorted(j for j, ok in sent.items() if not ok)
            rec["message_bytes"] = reply.nbytes
            rec["heard"], rec["missing"] = len(updates), list(res.missing)
            del updates, replies, shared, enc
        barrier.wait(f"{conf['name']}:done{r}")  # everyone has its result; the server's sends are through
        s1, v1 = byte_count(transport)
        rec["bytes_sent"], rec["bytes_received"] = s1 - s0, v1 - v0
        out["rounds"].append(rec)
    barrier.wait(f"{conf['name']}:close")
    counters = transport.counters()
    out["dropped"] = counters["dropped"]
    out["went_down"] = {str(k): v for k, v in counters["went_down"].items()}
    out["send_failed_total"] = counters["send_failed_total"]
    transport.close()
    return out


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    me = cfg["id"]
    t0 = time.thread_time()
    mine = llama7b_adapter(cfg["seed"] * 1000 + me)
    layout = AdapterLayout.from_adapter(mine, equal_rank=True)
    c0 = time.thread_time()
    tensors, _ = encode_adapter(mine, CODEC, return_decoded=False)
    encode_cpu_s = time.thread_time() - c0
    setup_cpu_s = time.thread_time() - t0
    if not any(c["roles"][str(me)] == "peer" for c in cfg["configs"]):
        mine = None  # only gossip mixes with its own exact adapter
    if all(c["roles"][str(me)] in ("server", "idle") for c in cfg["configs"]):
        tensors = None  # the server sends only aggregates
    ctx = zmq.Context()
    barrier = Barrier(ctx, cfg["barrier"], me)
    result = {"id": me, "encode_cpu_s": encode_cpu_s, "setup_cpu_s": setup_cpu_s, "configs": {}}
    barrier.wait("start")
    for conf in cfg["configs"]:
        result["configs"][conf["name"]] = run_config(cfg, conf, barrier, mine, tensors, layout)
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(cfg["out"]).write_text(json.dumps(result))
    barrier.wait("exit")
    barrier.sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
