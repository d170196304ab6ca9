"""Catch-up: a peer that comes back behind its neighbours (restarted, resumed alone, or new) joins their round.

Its neighbours' HELLOs say which round they are at. If they are ahead of the round it would start at, it asks them
for their state (a STATE_REQUEST; each neighbour answers with the STATE message it publishes after every round: its
adapter after that round, in fp32, validated like any round message), takes the most advanced one's adapter at its
own rank, and starts at the round after it. Meanwhile nobody waits for it: a neighbour whose latest word is from
before the previous round is known to be behind (`Transport._not_coming`). Stack mode cannot catch up this way (its
state is the merged base, which no adapter message carries): there the peer resumes at its own round, and the
others go on without it.

A straggler (a peer that trains slower than its neighbours) falls behind during the run, and its neighbours stop
waiting for it. Once they are more than the staleness bound ahead, its messages would only be dropped as too old:
`rejoin_if_behind` then asks for their states as well, mixes them with its own adapter by its row of the mixing
matrix (so its own training is not thrown away), and jumps to their round.
"""
from __future__ import annotations

import logging

from declora.learn.learner import Learner
from declora.wire.adapter_messages import message_to_adapter

log = logging.getLogger("declora.node.catch_up")


def catch_up(transport, hood, learner: Learner, start_round: int, timeout_s: float, rounds: int) -> int:
    """The round to start at: `start_round`, or, when the neighbours are ahead, the round after the most advanced
    state a neighbour sent (its adapter loaded into `learner`), but never past the run's last round (`rounds` - 1),
    which every peer runs and evaluates."""
    theirs = transport.neighbour_rounds()
    if not hood.can_catch_up or not theirs or max(theirs.values()) <= start_round:
        return start_round
    states = transport.request_state(timeout_s)
    usable = {j: m for j, m in states.items() if m.round >= start_round}
    if not usable:
        log.warning("neighbours are at round %d, this peer at %d, and no usable state came within %.0f s: going on "
                    "from round %d", max(theirs.values()), start_round, timeout_s, start_round)
        return start_round
    j, msg = max(usable.items(), key=lambda kv: (kv[1].round, -kv[0]))
    learner.load(hood.adopt(message_to_adapter(msg, transport.layout)))
    target = min(msg.round + 1, rounds - 1)
    learner.skip_to_round(target)
    log.info("caught up: took neighbour %d's state after its round %d; starting at round %d instead of %d", j,
             msg.round, target, start_round)
    return max(target, start_round)


def rejoin_if_behind(transport, hood, learner: Learner, t: int, lag: int, rounds: int) -> int:
    """The round to run next: `t`, or, when a live neighbour is more than `lag` rounds ahead, the round after the
    newest state the neighbours sent, with those states mixed into this peer's adapter."""
    if not hood.can_catch_up:
        return t
    live = transport.live_neighbours()
    ahead = {j: r for j, r in transport.neighbour_rounds().items() if j in live}
    if not ahead or max(ahead.values()) <= t + lag:
        return t
    states = {j: m for j, m in transport.request_state(1.0, which=set(ahead)).items() if m.round >= t}
    if not states:
        return t
    theirs = {j: message_to_adapter(m, transport.layout) for j, m in sorted(states.items())}
    learner.load(hood.mix_states(learner.adapter(), theirs))
    target = min(max(m.round for m in states.values()) + 1, rounds - 1)
    learner.skip_to_round(target)
    log.info("fell behind at round %d (neighbours at %d): mixed in the states of %s and went on at round %d", t,
             max(ahead.values()), sorted(states), target)
    transport.set_round(target)
    return max(target, t)
