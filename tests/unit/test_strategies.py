"""The strategy registry: every rule is found by its name and its server alias, says what it needs and what its
result means, and combines exactly as its pure function in core/aggregate.py does."""
from __future__ import annotations

import pytest
import torch

from declora.core import aggregate
from declora.core.strategies import SERVER_ALIASES, STRATEGIES, get_strategy
from tests.unit.test_aggregate import make_adapter, random_weights


def test_server_names_are_aliases_of_the_gossip_rules():
    assert get_strategy("fedit") is get_strategy("gossip")
    assert get_strategy("flora") is get_strategy("stack")
    assert get_strategy("flexlora") is get_strategy("svd")
    assert set(SERVER_ALIASES.values()) <= set(STRATEGIES)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown aggregation 'mean'.*gossip.*fedit"):
        get_strategy("mean")


def test_what_each_rule_declares():
    table = {name: (s.equal_ranks, s.merges_into_base, s.per_receiver) for name, s in STRATEGIES.items()}
    assert table == {"gossip": (True, False, False), "stack": (False, True, False), "svd": (False, False, True),
                     "zeropad": (False, False, True)}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_combine_is_the_pure_function(name):
    gen = torch.Generator().manual_seed(5)
    ranks = [4, 4, 4] if STRATEGIES[name].equal_ranks else [4, 2, 3]
    adapters = [make_adapter(gen, r) for r in ranks]
    w = random_weights(gen, 3)
    got = get_strategy(name).combine(adapters, w, rank=2, alpha=16.0)
    want = {"gossip": lambda: aggregate.gossip(adapters, w), "stack": lambda: aggregate.stack(adapters, w),
            "svd": lambda: aggregate.svd(adapters, w, rank=2, alpha=16.0),
            "zeropad": lambda: aggregate.zeropad(adapters, w, rank=2, alpha=16.0)}[name]()
    for key in want.factors:
        assert torch.equal(got.factors[key].A, want.factors[key].A) and torch.equal(got.factors[key].B, want.factors[key].B)
    assert all(torch.equal(got.dense[k], want.dense[k]) for k in want.dense)
    if STRATEGIES[name].per_receiver:
        assert set(got.ranks().values()) == {2}
