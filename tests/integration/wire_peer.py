"""A minimal peer process for the wire integration tests: synthetic LoRA factors, real ZmqTransport, gossip mixing.

Each round it sends its adapter, collects its neighbours', and mixes what arrived with renormalized Metropolis
weights (aggregate.gossip), like declora.node.peer but without a model. It records, per round, the adapter it sent, who
it heard and the weights it used (so the test can recompute every mix), liveness transitions with wall-clock times,
and at the end its transport counters as JSON.

    python wire_peer.py --id 3 --addresses book.json --topology ring:8 --rounds 20 --out DIR
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from declora.core import aggregate  # noqa: E402
from declora.core.factors import Adapter, LoraFactor  # noqa: E402
from declora.wire.adapter_messages import encode_adapter, message_to_adapter  # noqa: E402
from declora.wire.protocol import AdapterLayout, Kind, Limits, make_message  # noqa: E402
from declora.core.mixing import mixing_matrix, mixing_row, renormalize_row  # noqa: E402
from declora.core.topology_files import load_topology  # noqa: E402
from declora.wire.liveness import Liveness  # noqa: E402
from declora.wire.zmq_transport import ZmqTransport  # noqa: E402

MODULES, DIN, DOUT, RANK, ALPHA = 2, 12, 10, 3, 6.0


def synthetic_adapter(seed: int) -> Adapter:
    """Small, distinct per seed; the tests rebuild it from the same seed."""
    g = torch.Generator().manual_seed(seed)
    factors = {f"layers.{m}.q_proj": LoraFactor(torch.randn(RANK, DIN, generator=g),
                                                torch.randn(DOUT, RANK, generator=g), ALPHA) for m in range(MODULES)}
    return Adapter(factors, {"score.weight": torch.randn(2, DOUT, generator=g)})


def adapter_state(a: Adapter) -> dict:
    state = {f"{k}.A": f.A.clone() for k, f in a.factors.items()}
    state.update({f"{k}.B": f.B.clone() for k, f in a.factors.items()})
    state.update({f"dense.{k}": t.clone() for k, t in a.dense.items()})
    return state


def save_trace(trace: list, out: Path, name: str) -> None:
    torch.save(trace, out / f"trace-{name}.tmp")
    os.replace(out / f"trace-{name}.tmp", out / f"trace-{name}.pt")


def watch_liveness(transport: ZmqTransport, events: list, stop: threading.Event) -> None:
    """Record every up/down transition of the neighbours with the wall-clock time, every 20 ms."""
    live: set[int] = set()
    while not stop.is_set():
        now_live = transport.live_neighbours()
        for j in sorted(now_live ^ live):
            events.append({"t": time.time(), "peer": j, "state": "up" if j in now_live else "down"})
        live = now_live
        stop.wait(0.02)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--addresses", required=True, help="JSON file: peer id -> endpoint")
    p.add_argument("--topology", default="", help="topology spec (neighbours and Metropolis weights)")
    p.add_argument("--neighbours", default="", help="comma list instead of --topology (equal weights)")
    p.add_argument("--rounds", type=int, default=20, help="last round is rounds - 1")
    p.add_argument("--codec", default="fp32")
    p.add_argument("--seed", type=int, default=-1, help="adapter seed (default: the peer id)")
    p.add_argument("--deadline", type=float, default=20.0)
    p.add_argument("--heartbeat", type=float, default=0.25)
    p.add_argument("--missed", type=int, default=4)
    p.add_argument("--round-sleep", type=float, default=0.0, help="stands in for local training")
    p.add_argument("--wait-for", default=None, help="neighbours to wait for before round 0 (default: all)")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--join", action="store_true", help="start at the neighbours' round + 1 (late or restarted)")
    p.add_argument("--until-file", default="", help="stop after the round in which this file appears")
    p.add_argument("--keys", default="", help="CurveZMQ key folder")
    p.add_argument("--max-message-bytes", type=int, default=Limits().max_message_bytes)
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s peer {args.id} %(message)s")
    torch.set_num_threads(1)

    book = {int(k): v for k, v in json.loads(Path(args.addresses).read_text()).items()}
    if args.topology:
        topo = load_topology(args.topology)
        neighbours = topo.neighbors(args.id)
        row = mixing_row(mixing_matrix(topo.graph, "metropolis"), args.id)
    else:
        neighbours = [int(j) for j in args.neighbours.split(",") if j.strip()]
        row = {args.id: 0.5, **{j: 0.5 / len(neighbours) for j in neighbours}}
    mine = synthetic_adapter(args.id if args.seed < 0 else args.seed)
    layout = AdapterLayout.from_adapter(mine, equal_rank=True)  # gossip averages A and B: ranks must match
    security = None
    if args.keys:
        from declora.wire.security import load_security

        security = load_security(args.keys, args.id)
    out = Path(args.out)
    name = f"peer-{args.id}{args.tag}"
    trace, events = [], []
    stop = threading.Event()
    transport = ZmqTransport(args.id, book[args.id], {j: book[j] for j in neighbours}, layout=layout,
                             limits=Limits(max_message_bytes=args.max_message_bytes),
                             liveness=Liveness(args.heartbeat, args.missed), security=security)
    with transport:
        watcher = threading.Thread(target=watch_liveness, args=(transport, events, stop), daemon=True)
        watcher.start()
        wait_for = neighbours if args.wait_for is None else [int(j) for j in args.wait_for.split(",") if j.strip()]
        start = 0
        if args.join:
            # Hear from every neighbour first (they may be several rounds apart), then start just past the most
            # advanced one: a round the others have not finished yet, so nobody drops our first message as old.
            transport.wait_for_neighbours(min(args.start_timeout, 10.0), wait_for)
            rounds = transport.neighbour_rounds()
            start = max(rounds.values()) + 1 if rounds else 0
        else:
            missing = transport.wait_for_neighbours(args.start_timeout, wait_for)
            if missing:
                logging.warning("starting without %s", sorted(missing))
        t = start
        while t < args.rounds:
            if args.round_sleep:
                time.sleep(args.round_sleep)
            # Saved before sending and after mixing (atomically), so that what a SIGKILLed peer sent can be checked.
            record = {"round": t, "sent": adapter_state(mine), "heard": None}
            trace.append(record)
            save_trace(trace, out, name)
            tensors = encode_adapter(mine, args.codec)
            result = transport.exchange(t, make_message(Kind.FACTORS, args.id, t, tensors), args.deadline)
            theirs = {j: message_to_adapter(m, layout) for j, m in result.received.items()}
            weights = renormalize_row(row, args.id, heard=set(theirs))
            record.update(heard=sorted(theirs), weights=weights, time=time.time(), waited=result.waited_s)
            ids = [args.id, *sorted(theirs)]
            mine = aggregate.gossip([mine, *(theirs[j] for j in ids[1:])], [weights[i] for i in ids])
            save_trace(trace, out, name)
            (out / f"progress-{name}").write_text(str(t))
            t += 1
            if args.until_file and os.path.exists(args.until_file):
                break
        stop.set()
        watcher.join()
        counters = transport.counters()
    torch.save({"trace": trace, "final": adapter_state(mine), "start": start}, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps({"counters": counters, "events": events, "start": start,
                                                  "rounds_done": len(trace)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- for the tests: launching peers ---------------------------------------------------------------------------------
class Cluster:
    """Peer processes of one test: free loopback ports, an address book, logs and outputs in `out`."""

    def __init__(self, out: Path, n: int):
        import socket

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        held = []
        for _ in range(n):  # held open together so the ports are distinct
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        self.book = {i: f"tcp://127.0.0.1:{s.getsockname()[1]}" for i, s in enumerate(held)}
        for s in held:
            s.close()
        self.addresses = self.out / "addresses.json"
        self.addresses.write_text(json.dumps({str(k): v for k, v in self.book.items()}))
        self.procs: dict[str, "subprocess.Popen"] = {}

    def start(self, peer_id: int, *extra: str, tag: str = ""):
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        name = f"peer-{peer_id}{tag}"
        log = open(self.out / f"{name}.log", "w")
        cmd = [sys.executable, __file__, "--id", str(peer_id), "--addresses", str(self.addresses),
               "--out", str(self.out), f"--tag={tag}", *extra]
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self.procs[name]

    def progress(self, name: str) -> int:
        try:
            return int((self.out / f"progress-{name}").read_text())
        except (OSError, ValueError):
            return -1

    def rounds_hearing(self, name: str, peer: int, since: int) -> int:
        """How many of `name`'s finished rounds from `since` on heard `peer` (its trace is saved every round)."""
        try:
            trace = torch.load(self.out / f"trace-{name}.pt", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            return 0
        return sum(r["round"] >= since and peer in (r["heard"] or ()) for r in trace)

    def wait_until(self, condition, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not condition():
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() not in (None, 0, -9)}
            if dead:
                raise AssertionError(f"peer(s) failed while waiting for {what}: {dead}\n{self.logs()}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def finish(self, timeout: float = 90.0) -> dict[str, int]:
        import subprocess

        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def logs(self, tail: int = 15) -> str:
        parts = []
        for name in self.procs:
            lines = (self.out / f"{name}.log").read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def result(self, name: str) -> tuple[dict, dict]:
        data = torch.load(self.out / f"{name}.pt", weights_only=True)
        info = json.loads((self.out / f"{name}.json").read_text())
        return data, info


def state_to_adapter(state: dict) -> Adapter:
    keys = sorted({k[: -len(".A")] for k in state if k.endswith(".A")})
    return Adapter({k: LoraFactor(state[f"{k}.A"], state[f"{k}.B"], ALPHA) for k in keys},
                   {k[len("dense."):]: v for k, v in state.items() if k.startswith("dense.")})
