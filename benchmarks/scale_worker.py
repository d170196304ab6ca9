"""One peer process of benchmarks/bench_scale.py (started by it; not meant to be run by hand).

    python benchmarks/scale_worker.py CONFIG.json

The config names this process's id, the parent's barrier endpoint and, per configuration (ring gossip, degree-4
gossip, parameter server), its endpoint, its neighbours' endpoints and its mixing row. For each configuration in
turn the worker opens a ZmqTransport, waits until its neighbours are live, then runs warm-up + timed rounds, each
started at a barrier that the parent releases for all processes at once. It writes its per-round timings and byte
counts to the config's `out` file and exits.

No training: the payload is a random Llama-2-7B-shaped adapter (r=16 on q_proj and v_proj of 32 layers), encoded
once with the int8 codec. A round is what a real round does after training:

- gossip: exchange the encoded adapter with every neighbour (transport.exchange), mix what arrived with
  declora.core.aggregate.gossip using this peer's Metropolis row (renormalized over who was heard);
- server client: send an UPDATE (with its sample count) to the server, collect the AGGREGATE, take it in;
- server: collect every client's UPDATE, combine them with the fedit strategy (declora.core.strategies, data-share
  weights, as the server's aggregate_updates does), encode the aggregate (int8) and send it to every client.

Every received message is validated by the transport against the receiver's AdapterLayout and decoded on its I/O
thread as it arrives. The main thread's CPU time (time.thread_time, which timesharing does not inflate) is the mix
(or aggregate + encode): `compute_cpu_s`. Until the transports lost `decode=False`, this worker left decoding to the
main thread and `compute_cpu_s` included it; the decode now runs on the I/O thread and cannot be timed on its own
there, so each round also records `io_cpu_s`: the CPU time of every thread but the main one (the I/O thread's
receive, validation and decode, and ZeroMQ's threads).

On emulated hosts (bench_scale --links) the config names a network namespace: the worker joins it with setns(2)
first thing after the fork, before it makes any socket or thread (threads made later, ZeroMQ's among them, inherit
it), and talks plain text to its neighbours' private 10.x.y.z addresses (allow_plaintext_nonlocal: the namespaces'
bridge has no way out of the machine; CURVE would add its encryption's CPU to every 8.9 MB message on 2 cores).
"""
from __future__ import annotations

import ctypes
import faulthandler
import gc
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/scale_worker.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import zmq  # noqa: E402

from benchmarks.common import llama7b_adapter  # noqa: E402
from declora.core import aggregate  # noqa: E402
from declora.core.factors import Adapter  # noqa: E402
from declora.core.mixing import renormalize_row  # noqa: E402
from declora.core.strategies import get_strategy  # noqa: E402
from declora.wire.adapter_messages import encode_adapter, message_to_adapter  # noqa: E402
from declora.wire.liveness import Liveness  # noqa: E402
from declora.wire.protocol import AdapterLayout, Kind, Message, make_message  # noqa: E402
from declora.wire.zmq_transport import ZmqTransport  # noqa: E402

ALPHA = 32.0
CODEC = "int8"
FEDIT = get_strategy("fedit")  # one aggregate for every client (not per receiver)


CLONE_NEWNET = 0x40000000


def join_netns(name: str) -> None:
    """Move this (single-threaded) process into network namespace `name` (made by declora.node.netns)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def byte_count(transport) -> tuple[int, int]:
    c = transport.counters()
    return c["bytes_sent_total"], c["bytes_received_total"]


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no trimming, just more resident memory
    _LIBC = None


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise: tens of MB of slack per process after
    building the payload, too much for 65 processes on one host; benchmarks/README.md). Called outside the timings."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def private_mb() -> float:
    """This process's private resident memory (pages not shared with the zygote or anyone), MB."""
    total = 0
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    except OSError:
        return float("nan")
    return total / 1024


def by_module(message: Message) -> dict[str, list]:
    """Module key -> its [A, B] wire tensors (the transport has validated them against the layout)."""
    out: dict[str, list] = {}
    for t in message.tensors:
        out.setdefault(t.key, []).append(t)
    return out


def module_of(message: Message, wire: list) -> Adapter:
    """One module of a received (and already decoded) message, as an Adapter, through the same path as a whole
    message (message_to_adapter)."""
    return message_to_adapter(Message(message.kind, message.sender, message.round, {}, list(wire)))


def mix_gossip(me: int, mine: Adapter, received: dict[int, Message], weights: dict[int, float]) -> int:
    """declora.core.aggregate.gossip over this peer and its neighbours, one module at a time (the same arithmetic as
    one call on whole adapters: gossip averages every tensor on its own); returns the modules mixed."""
    ids = [me, *sorted(received)]
    w = [weights[i] for i in ids]
    wires = {j: by_module(m) for j, m in received.items()}
    for key in sorted(mine.factors):
        parts = [Adapter({key: mine.factors[key]}) if i == me else module_of(received[i], wires[i][key])
                 for i in ids]
        mixed = aggregate.gossip(parts, w)
        del parts, mixed  # a real peer writes the module into its model here
    return len(mine.factors)


def serve_fedit(me: int, r: int, received: dict[int, Message]) -> Message:
    """The server's round, one module at a time: every client's module combined by the fedit strategy with
    data-share weights (what declora.node.server.aggregate_updates does), the result encoded (int8); then one
    AGGREGATE message for every client."""
    ids = sorted(received)
    weights = aggregate.data_share_weights([int(received[j].body["samples"]) for j in ids])
    wires = {j: by_module(m) for j, m in received.items()}
    tensors = []
    for key in sorted(wires[ids[0]]):
        updates = [module_of(received[j], wires[j][key]) for j in ids]
        shared = FEDIT.combine(updates, weights, rank=None, alpha=ALPHA)
        tensors.extend(encode_adapter(shared, CODEC))
        del updates, shared
    return make_message(Kind.AGGREGATE, me, r, tensors)


def take_aggregate(message: Message) -> int:
    """A client takes the aggregate in, module by module (a real client writes each into its model)."""
    wires = by_module(message)
    for key in sorted(wires):
        module_of(message, wires[key])
    return len(wires)


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
                             liveness=Liveness(1.0, cfg["missed_heartbeats"]),
                             rcvhwm=max(64, 2 * len(nbrs)), linger_s=5.0,
                             allow_plaintext_nonlocal=cfg.get("netns") is not None).start()
    t0 = time.monotonic()
    missing = transport.wait_for_neighbours(cfg["start_timeout_s"])
    out["start_s"] = time.monotonic() - t0
    out["private_mb_connected"] = private_mb()
    out["missing_at_start"] = sorted(missing)
    barrier.wait(f"{conf['name']}:up")
    up = transport.counters()
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
        p0, m0 = time.process_time(), time.thread_time()
        rec: dict = {"round": r, "warmup": r < cfg["warmup"], "go": go}
        if role == "peer":
            res = transport.exchange(r, msg, deadline)
        elif role == "client":
            transport.send(server, msg)
            res = transport.collect(r, Kind.AGGREGATE, {server}, deadline)
        else:
            res = transport.collect(r, Kind.UPDATE, set(nbrs), deadline)
        rec["received_at"] = time.monotonic()
        c0 = time.thread_time()
        if role == "peer":
            mix_gossip(me, mine, res.received, renormalize_row(row, me, heard=set(res.received)))
        elif role == "client":
            for m in res.received.values():
                take_aggregate(m)
        else:
            msg = serve_fedit(me, r, res.received)
        rec["compute_cpu_s"] = time.thread_time() - c0
        if role == "server":
            sent = transport.broadcast(msg, to=sorted(res.received))
            rec["send_failed"] = sorted(j for j, ok in sent.items() if not ok)
        rec["done"] = time.monotonic()
        rec["message_bytes"] = msg.nbytes
        rec["heard"], rec["missing"] = len(res.received), list(res.missing)
        rec["private_mb"] = private_mb()  # peak-ish: this round's messages still held
        del res
        if role == "server":
            del msg  # the aggregate, sent: freed before the heap is trimmed
        barrier.wait(f"{conf['name']}:done{r}")  # everyone has its result; the server's sends are through
        rec["process_cpu_s"] = time.process_time() - p0  # every thread: zmq, I/O (validation, decode), main
        rec["io_cpu_s"] = rec["process_cpu_s"] - (time.thread_time() - m0)  # all but the main thread
        trim_heap()
        s1, v1 = byte_count(transport)
        rec["bytes_sent"], rec["bytes_received"] = s1 - s0, v1 - v0
        out["rounds"].append(rec)
    # Counters over the timed part only (from "up" to the last round's end): connection set-up (HELLOs that fail
    # until a DEALER has connected) and shutdown (BYEs, sends to peers already gone) are left out.
    end = transport.counters()
    out["dropped"] = {k: v - up["dropped"].get(k, 0) for k, v in end["dropped"].items() if v - up["dropped"].get(k, 0)}
    out["went_down"] = sum(end["went_down"].values()) - sum(up["went_down"].values())
    out["send_failed_total"] = end["send_failed_total"] - up["send_failed_total"]
    barrier.wait(f"{conf['name']}:close")
    # close() says BYE, joins the I/O thread and terminates the zmq context. Guarded: should it ever hang (one
    # unexplained stall of a whole run was seen once), say where, leave the context behind and go on.
    closer = threading.Thread(target=transport.close, daemon=True)
    closer.start()
    closer.join(cfg.get("close_timeout_s", 60))
    if closer.is_alive():
        print(f"worker {me}: {conf['name']}: transport.close() still running after "
              f"{cfg.get('close_timeout_s', 60)} s; going on without it", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        out["close_hung"] = True
    return out


def worker_main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    if cfg.get("netns"):  # before any socket or thread: everything made from here on lives on the emulated host
        join_netns(cfg["netns"])
    torch.set_num_threads(1)
    me = cfg["id"]
    t0 = time.thread_time()
    mine = llama7b_adapter(cfg["seed"] * 1000 + me, alpha=ALPHA)
    layout = AdapterLayout.from_adapter(mine, equal_rank=True)
    c0 = time.thread_time()
    tensors = encode_adapter(mine, CODEC)
    encode_cpu_s = time.thread_time() - c0
    setup_cpu_s = time.thread_time() - t0
    if not any(c["roles"][str(me)] == "peer" for c in cfg["configs"]):
        mine = None  # only gossip mixes with its own exact adapter
    if all(c["roles"][str(me)] in ("server", "idle") for c in cfg["configs"]):
        tensors = None  # the server sends only aggregates
    ctx = zmq.Context()
    barrier = Barrier(ctx, cfg["barrier"], me)
    trim_heap()
    result = {"id": me, "encode_cpu_s": encode_cpu_s, "setup_cpu_s": setup_cpu_s, "configs": {},
              "private_mb_setup": private_mb()}
    barrier.wait("start")
    for conf in cfg["configs"]:
        result["configs"][conf["name"]] = run_config(cfg, conf, barrier, mine, tensors, layout)
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # shared pages included
    Path(cfg["out"]).write_text(json.dumps(result))
    barrier.wait("exit")
    barrier.sock.close()
    ctx.term()
    return 0


def zygote(config_paths: list[str]) -> int:
    """Fork one worker per config after the imports, so that the N processes share torch's pages copy-on-write
    (gc.freeze keeps the garbage collector from copying them; what this saves per process: benchmarks/README.md).
    Each child is an ordinary OS process with its own sockets and threads (none exist before the fork: the zygote
    is single-threaded). If one fails, the others are stopped and the zygote exits 1. SIGUSR1 makes every worker
    write its threads' stacks to its log (faulthandler)."""
    torch.set_num_threads(1)
    gc.freeze()  # the imported objects: a child's garbage collector would otherwise touch (copy) all their pages
    children: dict[int, int] = {}

    def stop(signum, frame):  # the parent gives up: take the workers down with us
        signal_all(children, signal.SIGKILL)
        os._exit(1)

    def dump(signum, frame):  # forwarded to every worker: each writes its threads' stacks to its log
        signal_all(children, signal.SIGUSR1)

    # Installed before forking (each child resets both at once), so that a signal can never find the zygote
    # without them.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, dump)

    for i, path in enumerate(config_paths):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                log = os.open(Path(path).with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks where a stuck one is
                code = worker_main(path)
            except BaseException:  # noqa: BLE001 - report and exit the child, never return into the zygote loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = i

    failed = False
    while children:
        pid, status = os.wait()
        i = children.pop(pid, None)
        if i is not None and os.waitstatus_to_exitcode(status) != 0 and not failed:
            failed = True
            print(f"worker {i} failed (status {os.waitstatus_to_exitcode(status)}); stopping the others",
                  file=sys.stderr, flush=True)
            signal_all(children, signal.SIGTERM)
    return 1 if failed else 0


def signal_all(pids, signum: int) -> None:
    """Send `signum` to each of `pids` (the zygote's own children) that still exists."""
    for pid in list(pids):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--zygote":
        sys.exit(zygote(sys.argv[2:]))
    sys.exit(worker_main(sys.argv[1]))
