"""bench_scale's plan: the configurations at each N, their endpoints and mixing rows, and what fits the time and
memory budgets (from what the previous N measured).

Nothing here starts a process; scale_run.py does.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `import scale_plan` from benchmarks/: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import LLAMA7B_HIDDEN, LLAMA7B_LAYERS  # noqa: E402
from declora.core.mixing import mixing_matrix, mixing_row  # noqa: E402
from declora.core.topology_files import load_topology  # noqa: E402
from declora.node.addressbook import free_loopback_ports  # noqa: E402

CONFIGS = ("ring", "regular4", "server")
BANDWIDTHS = {"1G": 1e9, "10G": 10e9}  # bit/s per process
RANK, BLOCK = 16, 64
NUMEL = RANK * LLAMA7B_HIDDEN
MESSAGE_PAYLOAD_BYTES = 2 * LLAMA7B_LAYERS * 2 * (NUMEL + 4 * -(-NUMEL // BLOCK))  # int8 codes + fp32 scales, no header
# A received message is kept with its decoded fp32 values (the transport decodes on arrival): bytes per message byte.
DECODED_PER_MESSAGE_BYTE = 4 * NUMEL / (NUMEL + 4 * -(-NUMEL // BLOCK))


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def degree(name: str, n: int) -> int:
    """A process's number of neighbours in configuration `name` at N=n (the server's: its n clients). At N=4 a
    4-regular graph is impossible: regular4 is then complete:4, degree 3."""
    return {"ring": 2, "regular4": 4 if n > 4 else n - 1, "server": n}[name]


def bytes_model(name: str, n: int, message_bytes: int) -> int:
    """Bytes through the busiest process per round, payload only: what the counters show up to pings. A gossip peer
    sends its message to each neighbour and receives theirs; the server hears n updates and sends n aggregates."""
    return 2 * degree(name, n) * message_bytes


# ---- one N --------------------------------------------------------------------------------------------------------
def build_configs(n: int, seed: int, configs: tuple[str, ...], addresses: list[str] | None = None) -> list[dict]:
    """Per configuration: endpoints, each process's role, neighbours and mixing row. Ids 0..n-1 are peers or
    clients; id n is the server (idle during the gossip configurations). `addresses`: process i's host address
    (an emulated host of its own, where every port is free: port 7000 + the configuration's index); without it,
    free loopback ports."""
    out = []
    for index, name in enumerate(configs):
        if addresses is not None:
            book = {str(i): f"tcp://{addresses[i]}:{7000 + index}" for i in range(n + 1)}
        else:
            ports = free_loopback_ports(n + 1)
            book = {str(i): f"tcp://127.0.0.1:{ports[i]}" for i in range(n + 1)}
        if name == "server":
            roles = {str(i): "client" for i in range(n)} | {str(n): "server"}
            nbrs = {str(i): [n] for i in range(n)} | {str(n): list(range(n))}
            rng = np.random.default_rng(seed)
            samples = {str(i): int(x) for i, x in enumerate(rng.integers(500, 1500, size=n))}
            out.append({"name": name, "kind": "server", "spec": f"star: 1 server + {n} clients", "degree": n,
                        "server": n, "book": book, "roles": roles, "neighbours": nbrs, "samples": samples})
            continue
        spec = f"ring:{n}" if name == "ring" else (f"regular:{n}:4:{seed}" if n > 4 else f"complete:{n}")
        topo = load_topology(spec)
        M = mixing_matrix(topo.graph, "metropolis")
        roles = {str(i): "peer" for i in range(n)} | {str(n): "idle"}
        nbrs = {str(i): topo.neighbors(i) for i in range(n)}
        rows = {str(i): {str(j): w for j, w in mixing_row(M, i).items()} for i in range(n)}
        degrees = sorted(set(topo.degrees))
        out.append({"name": name, "kind": "gossip", "spec": spec, "degree": degrees[0] if len(degrees) == 1 else degrees,
                    "book": book, "roles": roles, "neighbours": nbrs, "rows": rows})
    return out


def plan_configs(prev: dict, n: int, configs, elapsed: float, budget: float, skipped: dict) -> list[str]:
    """The configurations to run at N=n within the time budget, predicted from the previous N (each
    configuration's wall time, and the start-up, scaled by the number of processes). Cheapest first, so that a
    tight budget keeps as many as it can; the rest go into `skipped`."""
    scale = (n + 1) / prev["processes"]
    startup = max(0.0, prev["wall_s"] - sum(c["wall_s"] for c in prev["configs"].values())) * scale
    plan = startup
    chosen = []
    for name in sorted(configs, key=lambda c: prev["configs"].get(c, {}).get("wall_s", float("inf"))):
        if name not in prev["configs"]:
            skipped[f"{name}@N={n}"] = f"not measured at N={prev['n']} either"
            continue
        t = prev["configs"][name]["wall_s"] * scale
        if elapsed + plan + t <= budget:
            chosen.append(name)
            plan += t
        else:
            skipped[f"{name}@N={n}"] = (f"time budget: predicted {t:.0f} s ({prev['configs'][name]['wall_s']:.0f} s at "
                                        f"N={prev['n']}, scaled by processes) + start-up {startup:.0f} s after "
                                        f"{elapsed:.0f} s would pass --budget-s {budget:.0f}")
    for name in configs:
        if f"{name}@N={n}" in skipped:
            print(f"N={n}: {name} skipped: {skipped[f'{name}@N={n}']}", flush=True)
    return [c for c in configs if c in chosen]


def memory_estimate_gib(prev: dict, n: int) -> float:
    """Memory that N=n would need, from the private memory the workers had at the previous N: every process as
    much as the largest non-server one, plus the server's received updates (one message per client, held with its
    decoded values)."""
    per_proc_mb = prev["worker_private_mb_max"]
    server_mb = n * prev["message_bytes"] * (1.5 + DECODED_PER_MESSAGE_BYTE) / 2**20
    return (1.2 * (n + 1) * per_proc_mb + server_mb + 300) / 1024  # + the zygote, socket buffers
