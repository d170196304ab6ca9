"""Peer processes that die during a run: restarting them (`--restart-dead`), and the record of who died when and who
came back that summary.json keeps under `faults`, with a warning when the peers that stay dead split the gossip graph.

A restarted process is started again with `--resume` and no round: each of its peers loads its own latest checkpoint,
and the peer's catch-up (node.catch_up) takes a neighbour's state when the neighbours are ahead. The launcher only
decides when, how often and whether; it never touches checkpoints or tensors.
"""
from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import networkx as nx

from declora.config import ConfigError, RunConfig
from declora.core.strategies import get_strategy
from declora.node.checkpoint import common_rounds, saved_rounds
from declora.node.metrics import read_jsonl

# The first restart comes after this many seconds, each next one after twice as long (at most MAX_BACKOFF_S): a
# process that dies again at once (a bad node, a full disk) does not spin, and its sockets have time to close.
RESTART_BACKOFF_S = 1.0
MAX_BACKOFF_S = 8.0


def can_catch_up(cfg: RunConfig) -> bool:
    """Whether a peer that comes back behind can take a neighbour's state. Not in stack mode (its state is the merged
    base, which no message carries), not behind a server (a client has no neighbour to take state from, and the
    server keeps no checkpoint), not for the centralized reference (one process, nobody to catch up with)."""
    if cfg.mode == "centralized" or cfg.server:
        return False
    return not get_strategy(cfg.mode).merges_into_base


def check_restart(cfg: RunConfig) -> RunConfig:
    """--restart-dead needs a mode in which a restarted peer can rejoin; it implies --fault-tolerant (the run must
    outlive the death for the restart to matter)."""
    if not cfg.restart_dead:
        return cfg
    if cfg.max_restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {cfg.max_restarts}")
    if not can_catch_up(cfg):
        what = f"--server {cfg.server}" if cfg.server else f"--mode {cfg.mode}"
        raise ConfigError(f"--restart-dead: with {what} a restarted peer cannot catch up with the others (no state "
                          f"transfer for it); use gossip, svd or zeropad, or drop --restart-dead")
    return replace(cfg, fault_tolerant=True)


def signal_name(code: int) -> str | None:
    """The signal that killed a process, from Popen's (negative) returncode; None for an exit."""
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def resume_point(cfg: RunConfig, run_dir: Path, ids: list[int], out) -> tuple[int | None, bool]:
    """Where --resume starts: (R, False) when every peer has the checkpoint of round R (the latest such R: peers may
    have been a round apart when the run was killed), else (None, True): each peer from its own latest checkpoint,
    and catch-up brings those behind to the others' round. Never back to round 0 over saved progress: that would cut
    the metrics and prune the newer checkpoints as stale."""
    peers = [i for i in ids if not (cfg.server and i == cfg.server_id)]
    resume_round = max(common_rounds(run_dir, peers), default=None)
    held = {p: saved_rounds(run_dir, p) for p in peers}
    have = "; ".join(f"peer {p}: {','.join(map(str, r)) or 'none'}" for p, r in held.items())
    if resume_round is not None or not any(held.values()):
        print(f"declora: resuming after round {resume_round + 1}" if resume_round is not None
              else "declora: nothing to resume, starting at round 1", file=out, flush=True)
        return resume_round, False
    if not can_catch_up(cfg):
        what = f"--server {cfg.server}" if cfg.server else f"--mode {cfg.mode}"
        raise ConfigError(f"--resume: the peers have no checkpoint round in common ({have}) and with {what} a peer "
                          f"cannot catch up with the others; resume from a run with --keep-checkpoints 2 or more "
                          f"(or 0), or start a new run in another --out")
    print(f"declora: the peers have no checkpoint round in common ({have}): each resumes from its own latest, those "
          f"behind catch up with their neighbours", file=out, flush=True)
    return None, True


def exit_text(code: int) -> str:
    return f"killed by {signal_name(code)}" if code < 0 else f"exit code {code}"


def last_round(run_dir: Path, peer: int) -> int | None:
    rounds = [r["round"] for r in read_jsonl(run_dir / "metrics" / f"peer-{peer}.jsonl") if "round" in r]
    return max(rounds) if rounds else None


def split_graph(cfg: RunConfig, dead: set[int]) -> list[list[int]] | None:
    """The connected parts of the gossip graph without the `dead` peers, when there are several (None when the live
    peers are still connected, or the run has no gossip graph). Each part trains on with its own data only."""
    if cfg.mode == "centralized" or cfg.server or not dead:
        return None
    graph = nx.Graph(cfg.gossip_topology().graph)
    graph.remove_nodes_from(dead)
    parts = sorted(sorted(c) for c in nx.connected_components(graph))
    return parts if len(parts) > 1 else None


class Faults:
    """Deaths and restarts of a run's processes (a process is named by its first peer id; `groups` gives its peers),
    the restarts still to come, and the record for summary.json."""

    def __init__(self, cfg: RunConfig, run_dir: Path, groups: dict[int, list[int]], started: float):
        self.cfg, self.run_dir, self.groups, self.started = cfg, run_dir, groups, started
        self.restarts = {pid: 0 for pid in groups}
        self.pending: dict[int, float] = {}  # process -> when it is due to be restarted
        self.dead: set[int] = set()  # processes dead with no restart to come
        self.deaths: list[dict] = []
        self.returns: list[dict] = []
        self.warned: list[list[int]] | None = None

    def now(self) -> float:
        return round(time.time() - self.started, 1)

    def died(self, pid: int, code: int, others_running: bool) -> list[str]:
        """Record a death; schedule a restart when one is allowed. Returns the lines to print."""
        at, group = self.now(), self.groups[pid]
        last = {peer: last_round(self.run_dir, peer) for peer in group}
        # Counted as the progress lines count (from 1); summary.json keeps the metrics' own 0-based round.
        after = f", last round in its metrics {last[pid] + 1}" if len(group) == 1 and last[pid] is not None else ""
        lines = [f"declora: {self.who(pid).removeprefix('the ')} died ({exit_text(code)}, t={at:.0f}s{after})"]
        for peer in group:
            self.deaths.append({"peer": peer, "process": pid, "at_s": at, "last_round": last[peer],
                                "exit_code": code if code >= 0 else None, "signal": signal_name(code)})
        if self.cfg.restart_dead and self.restarts[pid] < self.cfg.max_restarts and others_running:
            wait = min(MAX_BACKOFF_S, RESTART_BACKOFF_S * 2 ** self.restarts[pid])
            self.pending[pid] = time.monotonic() + wait
            return lines + [f"declora: restarting {self.who(pid)} in {wait:.0f} s (restart {self.restarts[pid] + 1} "
                            f"of {self.cfg.max_restarts})"]
        if self.cfg.restart_dead:
            why = "no other process is running to catch up with" if not others_running else \
                f"it was restarted {self.restarts[pid]} times (--max-restarts)"
            lines.append(f"declora: not restarting {self.who(pid)}: {why}")
        self.dead.add(pid)
        return lines + self.check_split()

    def due(self) -> list[int]:
        now = time.monotonic()
        return [pid for pid, when in sorted(self.pending.items()) if when <= now]

    def restarted(self, pid: int) -> str:
        self.pending.pop(pid)
        self.restarts[pid] += 1
        at = self.now()
        resumed = {}
        for peer in self.groups[pid]:
            rounds = saved_rounds(self.run_dir, peer)
            # Where its checkpoint puts it; a corrupt latest file makes the peer fall back one more (its metrics say).
            resumed[peer] = rounds[-1] + 1 if rounds else 0
            self.returns.append({"peer": peer, "process": pid, "at_s": at, "restart": self.restarts[pid],
                                 "resumed_at_round": resumed[peer], "caught_up_to_round": None})
        # Printed as the progress lines count (from 1): the first round to run, 0-based, is the rounds done.
        where = ", ".join(f"peer {p} after round {r}" for p, r in resumed.items())
        return f"declora: restarted {self.who(pid)} at t={at:.0f}s with --resume ({where})"

    def give_up(self) -> list[str]:
        """The run is over (finished or stopped): restarts still to come will not happen. Returns lines to print."""
        if not self.pending:
            return []
        self.dead.update(self.pending)
        self.pending.clear()
        return self.check_split()

    def check_split(self) -> list[str]:
        parts = split_graph(self.cfg, self.dead_peers())
        if parts is None or parts == self.warned:
            return []
        self.warned = parts
        return [f"declora: warning: the peers dead for good ({', '.join(map(str, sorted(self.dead_peers())))}) split "
                f"the gossip graph into {len(parts)} parts: " + " | ".join(",".join(map(str, p)) for p in parts)
                + "; each part trains on without the others"]

    def dead_peers(self) -> set[int]:
        return {peer for pid in self.dead for peer in self.groups[pid]}

    def who(self, pid: int) -> str:
        group = self.groups[pid]
        if self.cfg.server and pid == self.cfg.server_id:
            return "the server"
        return f"peer {pid}" if len(group) == 1 else f"the process of peers {group[0]}-{group[-1]}"

    def summary(self, per_peer: dict[int, list[dict]]) -> dict:
        """summary.json's `faults`: each death and return, with the round a returning peer caught up to (from its
        first metrics record after the catch-up), the peers dead at the end, and the graph's parts if it split."""
        returns = []
        for back in self.returns:
            start = back["resumed_at_round"]
            # Its first record after this return's catch-up: resumed at `start` (or before, when its latest checkpoint
            # did not load), caught up to a round past it. Earlier catch-ups ended before `start`.
            caught = next((r for r in per_peer.get(back["peer"], []) if r.get("caught_up_from_round") is not None
                           and r["caught_up_from_round"] <= start <= r["round"]), None)
            if caught is not None:  # what the peer really did
                back = {**back, "resumed_at_round": caught["caught_up_from_round"],
                        "caught_up_to_round": caught["round"]}
            returns.append(back)
        return {"deaths": self.deaths, "returns": returns, "dead_for_good": sorted(self.dead_peers()),
                "graph_parts": split_graph(self.cfg, self.dead_peers())}

