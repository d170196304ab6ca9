"""The block scales of `int8h` and `int4h`: 2 bytes a block, with float32's range (`codecs.BlockQuantCodec` with
`half_scales=True` uses these; this module imports nothing of `codecs`, so that `codecs` can import it).

Plain fp16 scales were rejected (see `codecs`' docstring): their range ends at 6.1e-5, and the tiny blocks of young
LoRA B factors would get subnormal or zero scales. Here the range question never arises: each tensor sends one
float32 scale S, the largest of its block scales, and every block's scale relative to it, scale_b / S in (0, 1], as
fp16. The relative scale is rounded up to the next fp16, never to nearest, so that

- no non-zero block's scale flushes to zero: the smallest relative scale is fp16's smallest subnormal, 2^-24;
- no element's code is clamped: every |x| / scale is at most qmax, as with exact scales;
- every element stays within half its block's step, |x - decode(x)| <= scale'_b / 2, where
  scale'_b <= scale_b * (1 + 2^-10) for relative scales in fp16's normal range (above 2^-14) and
  scale'_b <= scale_b + 2^-24 * S below it: a block 2^14 times smaller than the tensor's largest may lose relative
  precision, but its error stays below 2^-25 of the tensor's largest step.

The codes are computed with the rounded scale the receiver will use (S * r_b, a float32 product as decode computes
it), which absorbs the scale's rounding into the quantization step.

Scales buffer (little-endian): S as float32, then one fp16 r per block: 4 + 2 * nblocks bytes. Decoding checks
S finite in [0, max_scale] (so that no code can overflow float32) and every r finite in [0, 1]; anything else
raises ValueError.
"""
from __future__ import annotations

import numpy as np
import torch

_F16_UP = np.float16(np.inf)


def half_scales_nbytes(nblocks: int) -> int:
    return 4 + 2 * nblocks


def encode_half_scales(ranged: np.ndarray, qmax: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales buffer as a uint8 tensor, and the per-block inverse of the scale decode will use, shape (n, 1).

    `ranged`: the per-block absmax, float32, already floored at `floor` (> 0) so that no scale is zero; `floor` is
    also an empty tensor's peak."""
    peak = float(ranged.max(initial=floor))
    S = np.float32(peak / qmax)
    rel = ranged.astype(np.float64) / peak  # in (0, 1]
    r16 = rel.astype(np.float16)
    low = r16.astype(np.float64) < rel
    r16[low] = np.nextafter(r16[low], _F16_UP)  # round up: a block never gets a smaller step than it needs
    wire = torch.empty(half_scales_nbytes(r16.size), dtype=torch.uint8)
    raw = wire.numpy()
    raw[:4].view("<f4")[0] = S
    raw[4:].view("<f2")[:] = r16
    # Exactly the decoder's float32 product, so the codes fit the scale the receiver multiplies by. It is at least
    # floor / qmax (2^-100 / qmax: a normal float32), so its inverse is finite.
    scale = S * r16.astype(np.float32)
    inv = np.float32(1.0) / scale
    return wire, torch.from_numpy(inv.reshape(-1, 1))


def decode_half_scales(raw: memoryview, max_scale: float, codec: str) -> torch.Tensor:
    """The per-block float32 scales from a (hostile) scales buffer of the right length; ValueError if out of range."""
    S = float(np.frombuffer(raw, dtype="<f4", count=1)[0])
    if not 0.0 <= S <= max_scale:  # NaN fails too
        raise ValueError(f"{codec} codec: tensor scale must lie in [0, {max_scale:g}], got {S:g}")
    rel = np.frombuffer(raw, dtype="<f2", offset=4).astype(np.float32)
    if rel.size:
        lo, hi = float(rel.min()), float(rel.max())  # NaN propagates, and fails both comparisons below
        if not (lo >= 0 and hi <= 1):
            if not np.isfinite(rel).all():
                raise ValueError(f"{codec} codec: relative scales contain NaN or Inf")
            raise ValueError(f"{codec} codec: relative scales must lie in [0, 1], got [{lo:g}, {hi:g}]")
    # S <= max_scale and r <= 1, so every scale is at most max_scale: no code can overflow float32.
    return torch.from_numpy(np.float32(S) * rel)
