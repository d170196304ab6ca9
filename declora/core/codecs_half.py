"""`int8h`, `int4h`: the block-wise absmax codecs of `codecs` with 2-byte block scales that keep fp32's range.

Plain fp16 scales were rejected (see `codecs`' docstring): their range ends at 6.1e-5, and the tiny blocks of young
LoRA B factors would get subnormal or zero scales. Here the range question never arises: each tensor sends one
float32 scale S, the largest of its block scales, and every block's scale relative to it, scale_b / S in (0, 1], as
fp16. The relative scale is rounded up to the next fp16, never to nearest, so that

- no non-zero block flushes to zero: the smallest relative scale is fp16's smallest subnormal, 2^-24;
- no element's code is clamped: every |x| / scale is at most qmax, as with exact scales;
- the error of an element stays within half its block's step: |x - decode(x)| <= scale'_b / 2 with
  scale'_b <= scale_b * (1 + 2^-10) for relative scales above fp16's normal limit (2^-14), and
  scale'_b <= scale_b + 2^-24 * S below it. So a block 2^-14 times smaller than the tensor's largest may lose
  relative precision, but its error stays below 2^-25 of the tensor's largest step: nothing next to the tensor.

The codes are computed with the rounded scale the receiver will use (S * r_b in float32, as decode computes it),
which absorbs the scale's rounding into the quantization step.

Wire layout (little-endian), `meta = {"block": block}` as for int8/int4, `nblocks = ceil(numel / block)`:
    int8h: (codes int8, S float32 then r fp16 per block)   numel + 4 + 2 * nblocks bytes
    int4h: (codes uint8 nibbles as int4, same scales)      ceil(numel / 2) + 4 + 2 * nblocks bytes

Decoding checks, before use: exact buffer sizes, S finite in [0, max_scale] (so no code can overflow float32) and
every r finite in [0, 1]; anything else raises ValueError.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from declora.core.codecs import (
    _TINY,
    BlockQuantCodec,
    Encoded,
    _block_absmax,
    _blocks_view,
    _byte_view,
    _pack4,
    flat_float32,
)

_F16_UP = np.float16(np.inf)


class HalfScaleCodec(BlockQuantCodec):
    """Block-wise absmax quantization to `bits` (8 or 4) with one float32 tensor scale and fp16 relative scales."""

    def __repr__(self) -> str:
        return f"HalfScaleCodec({self.name!r}, block_size={self.block_size}, stochastic={self.stochastic})"

    def _layout(self, numel: int, block: int) -> tuple[int, int]:
        code_bytes = numel if self.bits == 8 else (numel + 1) // 2
        return code_bytes, 4 + 2 * (-(-numel // block))

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Encoded:
        flat = flat_float32(x, self.name)
        x_nb = _blocks_view(flat, self.block_size)
        wire, inv_n1 = self._half_scales(x_nb)
        codes = self._codes(x_nb, inv_n1, generator)[: flat.numel()]  # drop the padding of a partial block
        packed = codes if self.bits == 8 else _pack4(codes)
        return Encoded(self.name, tuple(x.shape), {"block": self.block_size}, (_byte_view(packed), memoryview(wire)))

    def _half_scales(self, x_nb: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """The scales buffer (S, then r per block) and the per-block inverse of the scale decode will use."""
        absmax = _block_absmax(x_nb)
        top = absmax.max(initial=0.0)  # NaN and Inf propagate and fail the one comparison below
        if not top <= self.max_scale * self.qmax:
            if not math.isfinite(top):
                raise ValueError(f"{self.name} codec: input has NaN or Inf")
            raise ValueError(f"{self.name} codec: input magnitude {top:g} is too large to quantize")
        # As in int8/int4: all-zero blocks are scaled as if their absmax were _TINY (no division by zero; they
        # still decode to exact zeros), and so is an all-zero tensor's S.
        ranged = np.maximum(absmax, np.float32(_TINY))
        peak = float(ranged.max(initial=_TINY))
        S = np.float32(peak / self.qmax)
        rel = ranged.astype(np.float64) / peak  # in (0, 1]
        r16 = rel.astype(np.float16)
        low = r16.astype(np.float64) < rel
        r16[low] = np.nextafter(r16[low], _F16_UP)  # round up: a block never gets a smaller step than it needs
        wire = np.empty(4 + 2 * r16.size, dtype=np.uint8)
        wire[:4].view("<f4")[0] = S
        wire[4:].view("<f2")[:] = r16
        # Exactly the decoder's float32 product, so the codes fit the scale the receiver multiplies by. It is at
        # least _TINY / qmax (a normal float32), so its inverse is finite.
        scale = S * r16.astype(np.float32)
        inv = np.float32(1.0) / scale
        return wire, torch.from_numpy(inv.reshape(-1, 1))

    def _read_scales(self, raw: memoryview) -> torch.Tensor:
        S = float(np.frombuffer(raw, dtype="<f4", count=1)[0])
        if not 0.0 <= S <= self.max_scale:  # NaN fails too
            raise ValueError(f"{self.name} codec: tensor scale must lie in [0, {self.max_scale:g}], got {S:g}")
        rel = np.frombuffer(raw, dtype="<f2", offset=4).astype(np.float32)
        if rel.size:
            lo, hi = float(rel.min()), float(rel.max())  # NaN propagates, and fails both comparisons below
            if not (lo >= 0 and hi <= 1):
                if not np.isfinite(rel).all():
                    raise ValueError(f"{self.name} codec: relative scales contain NaN or Inf")
                raise ValueError(f"{self.name} codec: relative scales must lie in [0, 1], got [{lo:g}, {hi:g}]")
        # S <= max_scale and r <= 1, so every scale is at most max_scale: no code can overflow float32.
        return torch.from_numpy(np.float32(S) * rel)
