"""--keep-moments (issue 15, FLoRA's fair baseline): the fresh adapter after a merge into the base takes the AdamW
moments of the one it replaces; without it, the optimizer starts empty as in FLoRA."""
from __future__ import annotations

import pytest
import torch

from declora.core.aggregate import stack
from tests.unit.test_live_adapter import learner


@pytest.mark.parametrize("keep", [False, True])
def test_merge_and_restart_keeps_the_moments_only_when_asked(keep):
    lrn = learner()
    lrn.train()
    old_params = [p for g in lrn.trainer.optimizer.param_groups for p in g["params"]]
    old = [lrn.trainer.optimizer.state[p]["exp_avg_sq"].clone() for p in old_params]
    adapter = lrn.adapter()
    lrn.merge_and_restart(stack([adapter], [1.0]), keep_moments=keep)
    new_params = [p for g in lrn.trainer.optimizer.param_groups for p in g["params"]]
    assert any(p is not q for p, q in zip(old_params, new_params))  # the LoRA tensors are new objects
    if not keep:
        assert not lrn.trainer.optimizer.state
        return
    for p, moment in zip(new_params, old):
        assert torch.equal(lrn.trainer.optimizer.state[p]["exp_avg_sq"], moment)
    stats = lrn.train()  # and AdamW takes a step with them
    assert stats["optimizer_reset"] is False and stats["steps"] == 2
