"""In-place work on the live adapter tensors of a peft model during local training (drift correction, issue 15).

`read_adapter`/`write_adapter` (learn.model) copy the whole adapter; a correction applied after every local step
should not. peft's state dict holds views of the live parameters, so subtracting from them moves the model itself,
and AdamW's moments stay attached to the same tensors.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from declora.core.factors import Adapter
from declora.learn.model import ADAPTER_NAME


def freeze_lora_A(model: nn.Module) -> int:
    """FFA-LoRA: the A factors stop training (they keep the shared initial value). Returns how many were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def offset_applier(model: nn.Module, offset: Adapter) -> Callable[[float], None]:
    """A function that subtracts `scale` x `offset` from the live LoRA factors and dense tensors, in place. The keys
    must be the model's own (those read_adapter gives)."""
    from peft import get_peft_model_state_dict

    live = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    pairs = []
    for key, f in offset.factors.items():
        pairs += [(live[f"{key}.lora_A.weight"], f.A), (live[f"{key}.lora_B.weight"], f.B)]
    pairs += [(live[key], t) for key, t in offset.dense.items()]
    params = {p.data_ptr() for p in model.parameters()}
    if any(t.data_ptr() not in params for t, _ in pairs):  # a copy would make the correction silently do nothing
        raise RuntimeError("peft's state dict no longer aliases the live parameters: the offset cannot be applied")
    pairs = [(t, d.to(device=t.device, dtype=t.dtype)) for t, d in pairs]

    def apply(scale: float) -> None:
        with torch.no_grad():
            for t, d in pairs:
                t.sub_(d, alpha=scale)

    return apply
