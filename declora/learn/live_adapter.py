"""In-place work on the live adapter tensors of a peft model during local training (drift correction, issue 15).

`read_adapter`/`write_adapter` (learn.model) copy the whole adapter; a correction applied after every local step
should not. peft's state dict holds views of the live parameters, so subtracting from them moves the model itself,
and AdamW's moments stay attached to the same tensors.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from declora.core.factors import Adapter, LoraFactor
from declora.learn.model import ADAPTER_NAME


def freeze_lora_A(model: nn.Module) -> int:
    """FFA-LoRA: the A factors stop training (they keep the shared initial value). Returns how many were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def _live_pairs(model: nn.Module, x: Adapter) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(live parameter, x's tensor for it) for every LoRA factor and dense tensor of `x`, whose keys must be the
    model's own (those read_adapter gives)."""
    from peft import get_peft_model_state_dict

    live = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    pairs = []
    for key, f in x.factors.items():
        pairs += [(live[f"{key}.lora_A.weight"], f.A), (live[f"{key}.lora_B.weight"], f.B)]
    pairs += [(live[key], t) for key, t in x.dense.items()]
    params = {p.data_ptr(): p for p in model.parameters()}
    if any(t.data_ptr() not in params for t, _ in pairs):  # a copy would make the correction silently do nothing
        raise RuntimeError("peft's state dict no longer aliases the live parameters: the correction cannot be applied")
    return [(params[t.data_ptr()], d.to(device=t.device, dtype=t.dtype)) for t, d in pairs]


def offset_applier(model: nn.Module, offset: Adapter) -> Callable[[float], None]:
    """A function that subtracts `scale` x `offset` from the live LoRA factors and dense tensors, in place."""
    pairs = _live_pairs(model, offset)

    def apply(scale: float) -> None:
        with torch.no_grad():
            for p, d in pairs:
                p.sub_(d, alpha=scale)

    return apply


class GradientCorrector:
    """Adds `correction` to the live gradients before each optimizer step (`__call__`, the trainer's before_step)
    and keeps their running sum, so that `mean()` is the round's mean corrected gradient in the correction's form."""

    def __init__(self, model: nn.Module, correction: Adapter):
        self.form, self.pairs = correction, _live_pairs(model, correction)
        self.sums = [torch.zeros_like(d, dtype=torch.float32) for _, d in self.pairs]
        self.steps = 0

    def __call__(self) -> None:
        with torch.no_grad():
            for (p, c), total in zip(self.pairs, self.sums):
                if p.grad is None:  # a tensor this step did not reach: its gradient is the correction alone
                    p.grad = c.clone()
                else:
                    p.grad.add_(c)
                total.add_(p.grad.float())
        self.steps += 1

    def mean(self) -> Adapter:
        means = iter([total / max(1, self.steps) for total in self.sums])
        factors = {k: LoraFactor(next(means), next(means), f.alpha, f.rslora) for k, f in self.form.factors.items()}
        return Adapter(factors, {k: next(means) for k in self.form.dense})
