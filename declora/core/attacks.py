"""What a Byzantine peer sends instead of its adapter: the attacks that robust mixing is tested and benchmarked on.

Only for tests and `benchmarks/bench_robust.py` (config keys `attack` and `attackers`): the hostile peer trains and
mixes like any other, but what it sends each round is `poison(name, its adapter, round)`:

- `huge`: every tensor times 1e18 (finite, passes every wire check; mixed in, the next training loss overflows);
- `signflip`: the adapter sign-flipped and scaled by 4 (pulls honest peers away from where they go);
- `nan`: every entry NaN (the wire drops it);
- `noise`: Gaussian noise with each tensor's own norm (plausible in size, useless in direction);
- `drift`: the adapter plus a fixed random direction whose length grows by 5% of the adapter's norm per round (slow
  poison that stays plausible for many rounds).
"""
from __future__ import annotations

import torch

from declora.core.factors import Adapter, LoraFactor

ATTACKS = ("none", "huge", "signflip", "nan", "noise", "drift")


def _map(adapter: Adapter, fn) -> Adapter:
    return Adapter({k: LoraFactor(fn(f"{k}.A", f.A), fn(f"{k}.B", f.B), f.alpha, f.rslora)
                    for k, f in adapter.factors.items()},
                   {k: fn(k, t) for k, t in adapter.dense.items()})


def _direction(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random unit-norm tensor per tensor name and seed (the same every round)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, name)))
    d = torch.randn(like.shape, generator=g, dtype=torch.float32)
    return (d / d.norm().clamp_min(1e-12)).to(like.dtype)


def poison(name: str, adapter: Adapter, t: int, seed: int = 0) -> Adapter:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}")
    if name == "none":
        return adapter
    if name == "huge":
        return _map(adapter, lambda k, x: x * 1e18)
    if name == "signflip":
        return _map(adapter, lambda k, x: x * -4.0)
    if name == "nan":
        return _map(adapter, lambda k, x: torch.full_like(x, float("nan")))
    if name == "noise":
        g = torch.Generator().manual_seed(seed * 7919 + t)

        def noise(k, x):
            d = torch.randn(x.shape, generator=g)
            return (d * (x.norm() / d.norm().clamp_min(1e-12))).to(x.dtype)  # each tensor's own norm, exactly
        return _map(adapter, noise)
    # drift
    return _map(adapter, lambda k, x: x + _direction(k, x, seed) * (0.05 * (t + 1)) * x.norm())


class HostileSender:
    """Wraps a peer's `AdapterSender`: encodes the poisoned adapter instead of the real one."""

    def __init__(self, sender, attack: str, seed: int):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; use one of {', '.join(ATTACKS)}")
        self.sender, self.attack, self.seed, self.round = sender, attack, seed, 0

    def encode(self, adapter: Adapter):
        if self.attack == "nan":  # an honest encoder refuses NaN: encode the real adapter, then overwrite the payload
            out = self.sender.encode(adapter)
            for wire in out:
                for buf in wire.encoded.buffers:
                    torch.frombuffer(buf, dtype=torch.uint8).fill_(0xFF)  # all-ones bytes: NaN as fp32/fp16/bf16
        else:
            out = self.sender.encode(poison(self.attack, adapter, self.round, self.seed))
        self.round += 1
        return out

    def __getattr__(self, name):  # reset_residuals, state_dict, load_state_dict: the real sender's
        return getattr(self.sender, name)
