"""The one in-memory form of an adapter: module key -> LoRA factors (A, B, r, alpha), plus small dense tensors.

Pure torch: no peft, no zmq. Everything that mixes, encodes or sends adapters speaks this form.
peft stores `lora_A.weight` as (r, in) and `lora_B.weight` as (out, r); the delta a module adds is
`scaling * B @ A` with `scaling = alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LoraFactor:
    """One module's LoRA factors. A_ri: (r, in), B_or: (out, r)."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise ValueError(f"LoRA factors must be 2-D, got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}")
        if self.A.shape[0] != self.B.shape[1]:
            raise ValueError(f"rank mismatch: A is {tuple(self.A.shape)} (r, in) but B is {tuple(self.B.shape)} (out, r)")

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def scaling(self) -> float:
        return scaling_for(self.alpha, self.r, self.rslora)

    def product(self) -> torch.Tensor:
        """The dense delta `scaling * B @ A`, shape (out, in). For tests and small layers only."""
        return self.scaling * (self.B @ self.A)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "LoraFactor":
        return LoraFactor(self.A.to(device=device, dtype=dtype), self.B.to(device=device, dtype=dtype), self.alpha, self.rslora)


def scaling_for(alpha: float, r: int, rslora: bool = False) -> float:
    """peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r


@dataclass
class Adapter:
    """A peer's whole trainable state: LoRA factors per module key and dense tensors (e.g. a classifier head).

    Module keys are peft's module paths without the `.lora_A.weight` suffix, e.g.
    `base_model.model.bert.encoder.layer.0.attention.self.query`. Dense keys are full parameter names.
    """

    factors: dict[str, LoraFactor] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return sorted(self.factors)

    def ranks(self) -> dict[str, int]:
        return {k: f.r for k, f in self.factors.items()}

    def num_parameters(self) -> int:
        n = sum(f.A.numel() + f.B.numel() for f in self.factors.values())
        return n + sum(t.numel() for t in self.dense.values())

    def clone(self) -> "Adapter":
        return Adapter(
            {k: LoraFactor(f.A.detach().clone(), f.B.detach().clone(), f.alpha, f.rslora) for k, f in self.factors.items()},
            {k: t.detach().clone() for k, t in self.dense.items()},
        )

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Adapter":
        return Adapter(
            {k: f.to(dtype, device) for k, f in self.factors.items()},
            {k: t.to(device=device, dtype=dtype) for k, t in self.dense.items()},
        )

    def products(self) -> dict[str, torch.Tensor]:
        """Dense delta per module (for tests, consensus metrics on small models)."""
        return {k: f.product() for k, f in self.factors.items()}
