"""Catch-up: a peer that comes back behind its neighbours (restarted, resumed alone, or new) joins their round.

Its neighbours' HELLOs say which round they are at. If they are ahead of the round it would start at, it asks them
for their state (a STATE_REQUEST; each neighbour answers with the STATE message it publishes after every round: its
adapter after that round, in fp32, validated like any round message), takes the most advanced one's adapter at its
own rank, and starts at the round after it. Meanwhile nobody waits for it: a neighbour whose latest word is from
before the previous round is known to be behind (`Transport._not_coming`). Stack mode cannot catch up this way (its
state is the merged base, which no adapter message carries): there the peer resumes at its own round, and the
others go on without it.
"""
from __future__ import annotations

import logging

from declora.learn.learner import Learner
from declora.wire.adapter_messages import message_to_adapter

log = logging.getLogger("declora.node.catch_up")


def catch_up(transport, hood, learner: Learner, start_round: int, timeout_s: float) -> int:
    """The round to start at: `start_round`, or, when the neighbours are ahead, the round after the most advanced
    state a neighbour sent (its adapter loaded into `learner`)."""
    rounds = transport.neighbour_rounds()
    if not hood.can_catch_up or not rounds or max(rounds.values()) <= start_round:
        return start_round
    states = transport.request_state(timeout_s)
    usable = {j: m for j, m in states.items() if m.round >= start_round}
    if not usable:
        log.warning("neighbours are at round %d, this peer at %d, and no usable state came within %.0f s: going on "
                    "from round %d", max(rounds.values()), start_round, timeout_s, start_round)
        return start_round
    j, msg = max(usable.items(), key=lambda kv: (kv[1].round, -kv[0]))
    learner.load(hood.adopt(message_to_adapter(msg, transport.layout)))
    log.info("caught up: took neighbour %d's state after its round %d; starting at round %d instead of %d", j,
             msg.round, msg.round + 1, start_round)
    return msg.round + 1
