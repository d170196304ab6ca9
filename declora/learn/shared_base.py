"""Several peers in one process keep one copy of the frozen base model: every frozen parameter of a peer's model is
replaced by the same tensor of the first peer's model (same name, same shape, same values), so the process holds the
base once and each peer only its own adapter, head, optimizer and data.

Sharing is safe because nobody writes a frozen weight: training updates only the LoRA factors and the head, and
peers run forward and backward passes on their own modules. Modes that merge deltas into the base (stack, FLoRA)
would write it, so the run config refuses them with shared bases.
"""
from __future__ import annotations

import torch
from torch import nn


def share_frozen_weights(model: nn.Module, donor: nn.Module) -> int:
    """Point every frozen parameter of `model` at `donor`'s parameter of the same name; return the bytes freed.

    Raises ValueError when a frozen tensor has no twin in `donor` or its values differ: the peers would not be
    training on the same base.
    """
    donors = dict(donor.named_modules())
    freed = 0
    for name, module in model.named_modules():
        for key, param in list(module._parameters.items()):
            if param is None or param.requires_grad:
                continue
            twin = donors.get(name)._parameters.get(key) if name in donors else None
            if twin is None or twin.shape != param.shape or twin.dtype != param.dtype:
                raise ValueError(f"frozen weight {name}.{key} has no twin of the same shape in the first peer's model")
            if twin is param:
                continue
            if not torch.equal(twin.data, param.data):
                raise ValueError(f"frozen weight {name}.{key} differs from the first peer's: the peers' bases are not "
                                 f"the same model")
            module._parameters[key] = twin
            freed += param.numel() * param.element_size()
    return freed
