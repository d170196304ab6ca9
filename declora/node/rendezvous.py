"""Peer discovery through the launcher's own rendezvous, so that no address book is written by hand.

Under `torchrun` or `srun`, each worker process becomes peer RANK of WORLD_SIZE. It publishes a card (its ZeroMQ
endpoint and its CURVE public key) in a `torch.distributed.TCPStore`, and reads every other peer's card from it.

- torchrun: the elastic agent already runs a TCPStore at MASTER_ADDR:MASTER_PORT and tells its workers so
  (TORCHELASTIC_USE_AGENT_STORE=True); every worker is a client. Without the agent's store, rank 0 hosts it there.
- SLURM: SLURM_PROCID 0 hosts the store on the job's first node (SLURM_JOB_NODELIST), at DECLORA_STORE_PORT or a
  port derived from the job id, so that two jobs sharing a node do not collide.

Trust: a TCPStore has no authentication. With --keys (key files made by `declora keys make`, copied to the nodes),
only the endpoints come from the store, and CURVE refuses a peer whose key is not the one on file. Without --keys,
the public keys come from the store too, which is as safe as the network the store listens on.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta

from declora.config import ConfigError

KEY_PREFIX = "declora"
SLURM_PORT_BASE, SLURM_PORT_SPAN = 29600, 2000  # the store port of job J: BASE + J % SPAN


@dataclass(frozen=True)
class Slot:
    """Where the launcher put this process: its rank, the world, and the store everyone meets at."""

    launcher: str  # torchrun | slurm
    rank: int
    world: int
    local_rank: int
    store_host: str
    store_port: int
    hosts_store: bool  # this process starts the store's server
    run_id: str  # keys are prefixed with it: one store may serve several runs


def launcher_slot(env: dict | None = None) -> Slot | None:
    """The slot torchrun or srun gave this process, or None when neither started it."""
    env = os.environ if env is None else env
    try:
        if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "MASTER_ADDR" in env):
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            return Slot("torchrun", rank, world, int(env.get("LOCAL_RANK", 0)), env["MASTER_ADDR"],
                        int(env["MASTER_PORT"]), hosts_store=rank == 0 and not agent_store,
                        run_id=env.get("TORCHELASTIC_RUN_ID", "torchrun"))
        if "SLURM_PROCID" in env:
            rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
            job = env.get("SLURM_JOB_ID", "0")
            port = int(env.get("DECLORA_STORE_PORT") or SLURM_PORT_BASE + int(job) % SLURM_PORT_SPAN)
            return Slot("slurm", rank, world, int(env.get("SLURM_LOCALID", 0)),
                        first_slurm_host(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "localhost")),
                        port, hosts_store=rank == 0, run_id=f"slurm-{job}.{env.get('SLURM_STEP_ID', '0')}")
    except (KeyError, ValueError) as e:
        raise ConfigError(f"the launcher's variables are incomplete or not integers ({type(e).__name__}: {e}); "
                          f"start workers with torchrun or srun, which set RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT "
                          f"or SLURM_PROCID/SLURM_NTASKS") from None
    return None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("node[07-09,12],gpu1" -> "node07"); scontrol knows every syntax, the
    fallback parses the common one."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    first = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if first is None:
        raise ConfigError(f"SLURM_JOB_NODELIST {nodelist!r} names no host")
    return first.group(1) + (first.group(2) or "")


def local_address(store_host: str) -> str:
    """The address peers on other hosts reach this one at: the one this host uses towards the store's host (a UDP
    socket's connect picks the route and sends nothing). Loopback when the store is on loopback."""
    try:
        target = socket.gethostbyname(store_host)
    except OSError as e:
        raise ConfigError(f"cannot resolve the rendezvous host {store_host!r} ({e}); check MASTER_ADDR or the "
                          f"SLURM node list") from None
    if ipaddress.ip_address(target).is_loopback:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))
        return s.getsockname()[0]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def open_store(slot: Slot, timeout_s: float):
    """The run's key space in the launcher's store (a PrefixStore, so torchrun's own keys are never touched)."""
    from torch.distributed import PrefixStore, TCPStore

    try:
        store = TCPStore(slot.store_host, slot.store_port, slot.world, is_master=slot.hosts_store,
                         timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    except (RuntimeError, OSError) as e:
        what = "start" if slot.hosts_store else "reach"
        raise ConfigError(f"cannot {what} the rendezvous store at {slot.store_host}:{slot.store_port} ({e}); "
                          f"check that the port is free and open between the nodes"
                          + (" (set DECLORA_STORE_PORT to choose another)" if slot.launcher == "slurm" else "")) \
            from None
    return PrefixStore(f"{KEY_PREFIX}/{slot.run_id}/", store)


def exchange_cards(store, slot: Slot, card: dict, timeout_s: float) -> dict[int, dict]:
    """Publish this peer's card and return every peer's (rank -> {"endpoint", "public_key"})."""
    store.set(f"card/{slot.rank}", json.dumps(card))
    keys = [f"card/{r}" for r in range(slot.world)]
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except RuntimeError:
        missing = [r for r in range(slot.world) if not store.check([f"card/{r}"])]
        raise ConfigError(f"peers {missing} did not publish their endpoints within {timeout_s:.0f} s; check that "
                          f"every node started (--start-timeout-s sets the wait)") from None
    cards = {}
    for r in range(slot.world):
        try:
            value = json.loads(store.get(f"card/{r}"))
            cards[r] = {"endpoint": str(value["endpoint"]), "public_key": str(value.get("public_key", ""))}
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"the rendezvous store holds a malformed card for peer {r}; is another run using "
                              f"the same store and run id?") from None
    return cards


def publish_metrics(store, rank: int, text: str) -> None:
    """A finished peer's metrics lines, for rank 0's summary of the whole run (nodes may not share a disk)."""
    store.set(f"metrics/{rank}", text)


def gather_metrics(store, world: int, timeout_s: float) -> dict[int, str]:
    """Rank 0: every peer's metrics lines that arrive within the timeout (a dead peer's are missing)."""
    deadline, got = time.monotonic() + timeout_s, {}
    for r in range(world):
        try:  # one deadline for all: a dead peer costs the wait once, not once per peer
            store.wait([f"metrics/{r}"], timedelta(seconds=max(0.01, deadline - time.monotonic())))
            got[r] = store.get(f"metrics/{r}").decode()
        except RuntimeError:
            continue
    return got
