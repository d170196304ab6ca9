"""Who a peer exchanges adapters with each round, and what it does with what comes back.

A neighbourhood is one of three things, chosen once from the run config (`neighbourhood_for`):

- `Gossip`: the peer's graph neighbours; it mixes their adapters with its own using its row of the mixing matrix
  and the run's strategy (renormalized over who was heard).
- `ServerClient`: a client of the parameter-server baseline; it sends its update and loads the server's aggregate.
- `Alone`: nobody (the centralized reference): nothing is sent and nothing changes.

The peer loop asks a neighbourhood to `exchange` and then to `combine`; it never asks which kind it has.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from declora.config import RunConfig
from declora.core.aggregate import consensus_distance
from declora.core.deadlines import stale_weight
from declora.core.drift import Correction, DriftRule, make_drift_rule
from declora.core.factors import Adapter
from declora.core.mixing import discount_row, mixing_matrix, mixing_row, renormalize_row
from declora.core.plausibility import PlausibilityCheck
from declora.core.robust import (COORDINATE_RULES, RobustRule, adapter_norm, clipped_weights, coordinatewise,
                                 distances_for)
from declora.core.strategies import Strategy, get_strategy
from declora.node.checkpoint import adapter_from_state, adapter_to_state
from declora.wire.adapter_messages import AdapterSender, decode_received, encode_adapter
from declora.wire.protocol import AdapterLayout, Kind, Message, make_message

log = logging.getLogger("declora.node.neighbourhood")


@dataclass
class Received:
    """What one exchange brought: decoded adapters by sender, their mixing weights (self included), and stats."""

    adapters: dict[int, Adapter] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    bytes_received: int = 0
    waited_s: float = 0.0
    bytes_sent: int = 0
    distance: float = 0.0  # consensus distance of the adapters mixed (gossip only)
    implausible: dict[int, str] = field(default_factory=dict)  # dropped by the plausibility check, with the reason
    clipped: list[int] = field(default_factory=list)  # neighbours whose pull robust clipping shortened
    clip_radius: float | None = None
    late: dict[int, int] = field(default_factory=dict)  # neighbours mixed from an earlier round: how many rounds late
    arrivals: dict[int, float] = field(default_factory=dict)  # on-time neighbours: seconds after we were ready
    awaited: int = 0  # neighbours the round waited for (live and not known to be behind)


@dataclass
class Combined:
    """The round's result for the model: load `adapter`, or (`merge`) merge it into the base and start afresh."""

    adapter: Adapter
    merge: bool


class Gossip:
    """Graph neighbours, mixed with this peer's row of the mixing matrix by the run's strategy.

    A neighbour cut off by the deadline is mixed in a later round at a discounted weight (bounded staleness,
    core.deadlines.stale_weight), so the round's deadline can adapt to the neighbours' arrivals (`adapts_deadline`).
    Every received adapter first passes the plausibility check (an implausible one is dropped, logged and counted, as
    if it had not arrived); then the robust rule, if any, decides how much each neighbour may pull (declora.core.robust).
    """

    adapts_deadline = True

    def __init__(self, peer_id: int, topology, row: dict[int, float], strategy: Strategy, rank: int,
                 max_rank: int, alpha: float, rslora: bool, robust: RobustRule = RobustRule(),
                 plausibility: PlausibilityCheck | None = None, stale_rounds: int = 0, stale_decay: float = 0.5,
                 drift: DriftRule | None = None):
        self.peer_id, self.topology, self.row, self.strategy = peer_id, topology, row, strategy
        self.drift = drift if drift is not None else DriftRule(1)  # what is sent and mixed, and what a step adds
        self._sent: Adapter | None = None  # this round's payload, exactly as mixed on our side
        self.neighbours = topology.neighbors(peer_id)
        self.rank, self.max_rank, self.alpha, self.rslora = rank, max_rank, alpha, rslora
        self.robust = robust
        self.plausibility = plausibility if plausibility is not None else PlausibilityCheck()
        self.implausible_total = 0
        self.stale_rounds, self.stale_decay = stale_rounds, stale_decay

    def inbound_layout(self, mine: Adapter) -> AdapterLayout:
        """Our modules and dense tensors; factor averaging needs our rank, the exact modes any rank up to the
        largest in the run."""
        return AdapterLayout.from_adapter(self.drift.payload_like(mine), max_rank=self.max_rank,
                                          equal_rank=self.strategy.equal_ranks)

    def begin_round(self, start: Adapter) -> Correction | None:
        """The adapter before the round's local steps; returns what the rule asks of them (core.drift)."""
        return self.drift.begin_round(start)

    def exchange(self, transport, t: int, mine: Adapter, sender: AdapterSender, samples: int,
                 deadline_s: float, quorum: tuple[int, float] | None = None) -> Received:
        self._sent = self.drift.payload(mine)
        result = transport.exchange(t, make_message(Kind.FACTORS, self.peer_id, t, sender.encode(self._sent)),
                                    deadline_s, quorum)
        # A neighbour cut off by an earlier round's deadline counts now, discounted by how late it is.
        adapters = decode_received({**result.received, **result.late}, transport.layout)
        implausible = self.plausibility.screen(adapter_norm(self._sent),
                                               {j: adapter_norm(a) for j, a in adapters.items()})
        for j, why in implausible.items():
            log.warning("peer %d round %d: dropped neighbour %d's adapter as implausible: %s", self.peer_id, t, j, why)
            del adapters[j]
        self.implausible_total += len(implausible)
        late = {j: t - m.round for j, m in result.late.items() if j in adapters}
        weights = renormalize_row(self.row, self.peer_id, heard=set(adapters))
        if late:
            weights = discount_row(weights, self.peer_id,
                                   {j: stale_weight(age, self.stale_rounds, self.stale_decay) for j, age in late.items()})
        nbytes = sum(m.nbytes for m in (*result.received.values(), *result.late.values()))
        return Received(adapters, weights, list(result.missing), nbytes, result.waited_s, result.bytes_sent,
                        implausible=implausible, late=late, arrivals=dict(result.arrivals), awaited=result.awaited)

    def combine(self, mine: Adapter, got: Received) -> Combined:
        """Our exact adapter mixed with the neighbours' decoded ones (robustly, if the run says so); with drift
        correction, what is mixed is each peer's payload, and the rule turns the mix into our adapter."""
        sent = self._sent if self._sent is not None else self.drift.payload(mine)
        ids = [self.peer_id, *sorted(got.adapters)]
        adapters = [sent if i == self.peer_id else got.adapters[i] for i in ids]
        weights = [got.weights[i] for i in ids]
        got.distance = consensus_distance(adapters) if len(adapters) > 1 else 0.0
        if self.robust.name in COORDINATE_RULES:
            return Combined(self.drift.finish(coordinatewise(adapters, self.robust.name, self.robust.trim), mine),
                            False)
        if self.robust.name == "clip" and len(adapters) > 1:
            distances = distances_for(self.strategy.equal_ranks, sent, adapters[1:])
            weights, got.clip_radius = clipped_weights(weights, distances, self.robust.trim)
            got.clipped = [j for j, d in zip(ids[1:], distances) if d > got.clip_radius]
            got.weights = dict(zip(ids, weights))
        mixed = self.strategy.combine(adapters, weights, rank=self.rank, alpha=self.alpha, rslora=self.rslora)
        return Combined(self.drift.finish(mixed, mine), self.strategy.merges_into_base)

    # ---- catch-up: a peer that is behind takes a neighbour's state --------------------------------------------------
    @property
    def can_catch_up(self) -> bool:
        """Not in stack mode: there the state is the merged base itself, which no adapter message carries."""
        return not self.strategy.merges_into_base

    def state_message(self, t: int, adapter: Adapter) -> Message | None:
        """What a neighbour that is behind gets when it asks: our adapter after round t, in fp32."""
        if not self.can_catch_up:
            return None
        return make_message(Kind.STATE, self.peer_id, t, encode_adapter(adapter, "fp32"))

    def adopt(self, theirs: Adapter) -> Adapter:
        """A neighbour's state as our adapter: at our own rank (svd and zeropad re-factorize or pad it)."""
        return self.strategy.combine([theirs], [1.0], rank=self.rank, alpha=self.alpha, rslora=self.rslora)

    def mix_states(self, mine: Adapter, theirs: dict[int, Adapter]) -> Adapter:
        """A straggler rejoining: its adapter mixed with the neighbours' states by its row, renormalized over them."""
        weights = renormalize_row(self.row, self.peer_id, heard=set(theirs))
        ids = [self.peer_id, *sorted(theirs)]
        adapters = [mine if i == self.peer_id else theirs[i] for i in ids]
        return self.strategy.combine(adapters, [weights[i] for i in ids], rank=self.rank, alpha=self.alpha,
                                     rslora=self.rslora)

    def state_dict(self) -> dict:
        """What it learned from past rounds (the plausibility check's history, the drift rule's correction or
        momentum): goes into the checkpoint."""
        return {"plausibility": self.plausibility.state_dict(), "drift": drift_state(self.drift)}

    def load_state_dict(self, state: dict) -> None:
        if "plausibility" in state:
            self.plausibility.load_state_dict(state["plausibility"])
        load_drift_state(self.drift, state)


class ServerClient:
    """A client of the parameter-server baseline. With --drift the update is the rule's payload and the aggregate
    goes through the rule, as in gossip: K-GT behind a server is SCAFFOLD (server-side drift correction)."""

    can_catch_up = False  # a client gets the server's aggregate every round: nothing to catch up

    def state_message(self, t: int, adapter: Adapter) -> None:
        return None

    def __init__(self, peer_id: int, server_id: int, strategy: Strategy, total_rank: int,
                 drift: DriftRule | None = None):
        self.peer_id, self.server_id, self.strategy, self.total_rank = peer_id, server_id, strategy, total_rank
        self.neighbours = [server_id]
        self.drift = drift if drift is not None else DriftRule(1)

    def begin_round(self, start: Adapter) -> Correction | None:
        return self.drift.begin_round(start)

    def inbound_layout(self, mine: Adapter) -> AdapterLayout:
        """The server's aggregate: our modules; a FLoRA stack is as wide as all ranks together."""
        return AdapterLayout.from_adapter(self.drift.payload_like(mine), max_rank=self.total_rank, same_alpha=False)

    def exchange(self, transport, t: int, mine: Adapter, sender: AdapterSender, samples: int,
                 deadline_s: float, quorum: tuple[int, float] | None = None) -> Received:
        # The update states its sample count: the server weighs clients by their data shares.
        update = make_message(Kind.UPDATE, self.peer_id, t, sender.encode(self.drift.payload(mine)),
                              body={"samples": samples})
        sent = update.nbytes if transport.send(self.server_id, update) else 0
        result = transport.collect(t, Kind.AGGREGATE, {self.server_id}, deadline_s)
        adapters = decode_received(result.received, transport.layout)
        return Received(adapters, {}, list(result.missing), sum(m.nbytes for m in result.received.values()),
                        result.waited_s, sent)

    def state_dict(self) -> dict:
        return {"drift": drift_state(self.drift)}

    def load_state_dict(self, state: dict) -> None:
        load_drift_state(self.drift, state)

    def combine(self, mine: Adapter, got: Received) -> Combined | None:
        if not got.adapters:  # no aggregate this round (server slow or gone): keep training the local adapter
            return None
        return Combined(self.drift.finish(next(iter(got.adapters.values())), mine), self.strategy.merges_into_base)


class Alone:
    neighbours: list[int] = []
    can_catch_up = False

    def begin_round(self, start: Adapter) -> None:
        return None

    def state_message(self, t: int, adapter: Adapter) -> None:
        return None

    def __init__(self, peer_id: int):
        self.peer_id = peer_id

    def inbound_layout(self, mine: Adapter) -> None:
        return None

    def exchange(self, transport, t: int, mine: Adapter, sender: AdapterSender, samples: int,
                 deadline_s: float, quorum: tuple[int, float] | None = None) -> Received:
        return Received()

    def combine(self, mine: Adapter, got: Received) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def neighbourhood_for(cfg: RunConfig, peer_id: int) -> Gossip | ServerClient | Alone:
    ranks = cfg.rank_list()
    if cfg.mode == "centralized":
        return Alone(peer_id)
    if cfg.server:
        return ServerClient(peer_id, cfg.server_id, get_strategy(cfg.server), total_rank=sum(ranks),
                            drift=drift_rule(cfg))
    topology = cfg.gossip_topology()  # validate() checked that it loads and has cfg.peers nodes
    row = mixing_row(mixing_matrix(topology.graph, cfg.mixing), peer_id)
    return Gossip(peer_id, topology, row, get_strategy(cfg.mode), rank=ranks[peer_id], max_rank=max(ranks),
                  alpha=cfg.alpha, rslora=cfg.rslora, robust=RobustRule(cfg.robust, cfg.robust_trim),
                  plausibility=PlausibilityCheck(cfg.plausible_ratio), stale_rounds=cfg.stale_rounds,
                  stale_decay=cfg.stale_decay, drift=drift_rule(cfg))


def drift_state(drift: DriftRule) -> dict:
    """The rule's correction or momentum in the checkpoint's tensor-only form."""
    return {k: None if v is None else adapter_to_state(v) for k, v in drift.state_dict().items()}


def load_drift_state(drift: DriftRule, state: dict) -> None:
    if state.get("drift"):
        drift.load_state_dict({k: None if v is None else adapter_from_state(v) for k, v in state["drift"].items()})


def drift_rule(cfg: RunConfig) -> DriftRule:
    return make_drift_rule(cfg.drift, cfg.local_steps, qgm_beta=cfg.qgm_beta, qgm_mu=cfg.qgm_mu,
                           outer_lr=cfg.outer_lr, outer_momentum=cfg.outer_momentum)
