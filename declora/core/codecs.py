"""Encode and decode one tensor for the wire, with exact byte counts (error feedback is in `error_feedback`).

Pure torch + numpy (no zmq, no msgpack): `protocol.py` puts `Encoded.meta` in the msgpack header and
`Encoded.buffers` in the following ZeroMQ frames, and hands received frames back to `Codec.decode`.

Codecs (hivemind style: one small object each, with encode, decode and an exact size known in advance):

- `fp32`: the raw float32 bytes.
- `fp16`, `bf16`: a cast; bf16 travels as its raw 2-byte pattern (numpy has no bf16).
- `int8`, `int4`: block-wise absmax quantization of the flattened (row-major) tensor. Each block of `block`
  consecutive elements gets one float32 scale `absmax / qmax` and codes `round(x / scale)` in [-qmax, qmax]
  (symmetric: qmax = 127 for int8, 7 for int4; zero is exact). The last block may be partial: the encoder pads it
  with zeros in memory only (zeros change no absmax and get code 0) and sends exactly `numel` codes. int4 codes
  are stored offset by +8 as nibbles, two per byte, element 2i in the low nibble; an odd element count leaves a
  pad nibble in the last byte, which decode ignores.
  Optional stochastic rounding `floor(x / scale + U[0, 1))` is unbiased: E[decode(encode(x))] = x; pass a CPU
  torch.Generator for reproducible draws.
- `int8h`, `int4h`: the same codes, with one float32 scale per tensor and fp16 block scales relative to it
  (`codecs_half`: why, and the error bound).

Every codec takes a float tensor of any shape, dtype and device (CUDA is moved to CPU first) and decodes to a
fresh float32 CPU tensor of the original shape. NaN/Inf input is refused with ValueError.

Wire layout (little-endian, as every platform torch runs on):
    fp32/fp16/bf16: (values,)                      numel * 4 / 2 / 2 bytes
    int8:           (codes int8, scales float32)   numel + 4 * nblocks bytes
    int4:           (codes uint8, scales float32)  ceil(numel / 2) + 4 * nblocks bytes
    int8h / int4h:  (codes as int8 / int4, scales: float32 S, then fp16 per block)  codes + 4 + 2 * nblocks bytes
with `nblocks = ceil(numel / block)` and `meta = {"block": block}` for the block codecs, `{}` otherwise.

Why float32 scales and not fp16: fp16 would save 2 bytes per block (int8 at block 64: 0.2578 instead of 0.2656 of
fp32's bytes; int4: 0.1328 instead of 0.1406), but its normal range ends at 6.1e-5: an int8 block whose absmax is
below ~7.8e-3 gets a subnormal scale, and below ~3.8e-6 the scale flushes to zero. LoRA B factors start at zero and
grow by about the learning rate per step, so tiny blocks are the common case early in training, not a corner.
benchmarks/bench_codecs.py measures int8's error with fp32, fp16 and bf16 scales across data scales (figures in
benchmarks/README.md): fp16 scales fall apart on tiny blocks, so range safety wins. bf16 scales would keep fp32's
range at 2 bytes. `int8h`/`int4h` (`codecs_half`) take another way to 2-byte scales: one float32 scale per tensor
and fp16 block scales relative to it, rounded up, so that range is never a problem.

Decoding never trusts its input: shape, meta, buffer count and every buffer's exact length are checked before
anything is allocated, scales must be finite, non-negative and small enough that no code can overflow float32, and
float payloads are checked for NaN/Inf. Anything wrong raises ValueError saying what.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from declora.core.codecs_half import decode_half_scales, encode_half_scales, half_scales_nbytes

CODEC_NAMES = ("fp32", "fp16", "bf16", "int8", "int4", "int8h", "int4h")

# The wire format is little-endian and this module writes tensors' raw bytes (and packs int4 through int16 words).
if sys.byteorder != "little":  # pragma: no cover - no such host in sight
    raise ImportError("declora.core.codecs assumes a little-endian host")

DEFAULT_BLOCK = 64
MAX_BLOCK = 1 << 20
MAX_NDIM = 32
# Bound on the product of a shape's dims, zeros counted as ones: torch computes strides from it even for an empty
# tensor, and (0, 2^40, 2^40, 2^40) would overflow int64 inside torch instead of failing here.
MAX_ELEMENTS = 1 << 48

_F32_MAX = float(np.finfo(np.float32).max)
# Blocks are scaled as if their absmax were at least this: qmax / absmax would overflow float32 for subnormal
# absmax, and a quantization step of 2^-100 / qmax is nothing for a model weight.
_TINY = 2.0**-100


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor: header fields (codec, shape, meta) plus raw buffers that go out as frames unchanged."""

    codec: str
    shape: tuple[int, ...]
    meta: dict
    buffers: tuple

    @property
    def nbytes(self) -> int:
        """The exact payload size: the sum of the buffers' byte lengths (the header is counted by protocol)."""
        return sum(memoryview(b).nbytes for b in self.buffers)


class Codec:
    """Base class: `encode` a tensor, `decode` shape + meta + buffers, and the exact encoded size in advance."""

    name: str = ""

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Encoded:
        raise NotImplementedError

    def decode(self, shape, meta: dict, buffers: Sequence) -> torch.Tensor:
        raise NotImplementedError

    def buffer_nbytes(self, shape, meta: dict | None = None) -> tuple[int, ...]:
        """Exact byte length of each buffer for `shape` (and a received `meta`; default: this codec's own)."""
        raise NotImplementedError

    def encoded_nbytes(self, shape) -> int:
        """Exact total size of `encode()`'s buffers for a tensor of `shape`."""
        return sum(self.buffer_nbytes(shape))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def flat_float32(x: torch.Tensor, codec: str) -> torch.Tensor:
    """`x` as a contiguous 1-D float32 CPU tensor (a view of `x` when it already is one)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{codec} codec: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{codec} codec: expected a floating-point tensor, got {x.dtype}")
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous().reshape(-1)


def _all_finite(t: torch.Tensor) -> bool:
    """One vectorized reduction, not torch.isfinite(t).all() and its full-size mask: NaN propagates through aminmax."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def _refuse_nonfinite(flat: torch.Tensor, codec: str) -> None:
    if not _all_finite(flat):
        raise ValueError(f"{codec} codec: input has NaN or Inf")


def _byte_view(t: torch.Tensor) -> memoryview:
    """A flat byte memoryview of a contiguous CPU tensor's storage: zero copy, and it keeps the storage alive."""
    return memoryview(t.numpy()).cast("B")


def _check_shape(shape) -> tuple[tuple[int, ...], int]:
    """Validate a (possibly hostile) shape; return it as a tuple and its element count."""
    if not isinstance(shape, (tuple, list)):
        raise ValueError(f"shape must be a list or tuple of ints, got {type(shape).__name__}")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"shape has {len(shape)} dimensions, more than {MAX_NDIM}")
    for d in shape:
        # bool is an int subclass; a shape of True/False is a bug or an attack, not a size.
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0:
            raise ValueError(f"bad shape {list(shape)!r}: every dimension must be a non-negative int")
    shape = tuple(int(d) for d in shape)
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise ValueError(f"bad shape {list(shape)!r}: more than {MAX_ELEMENTS} elements")
    return shape, math.prod(shape)


def _check_block(meta) -> int:
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    block = meta.get("block")
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"meta 'block' must be an int in [1, {MAX_BLOCK}], got {block!r}")
    return block


def _byte_buffers(buffers, expected: tuple[int, ...], codec: str) -> list[memoryview]:
    """Check the buffer count and each buffer's exact length; return flat byte memoryviews (no copies)."""
    if not isinstance(buffers, (tuple, list)):
        raise ValueError(f"{codec} codec: buffers must be a list or tuple, got {type(buffers).__name__}")
    if len(buffers) != len(expected):
        raise ValueError(f"{codec} codec: expected {len(expected)} buffer(s), got {len(buffers)}")
    views = []
    for i, (buf, want) in enumerate(zip(buffers, expected)):
        try:
            mv = memoryview(buf)
        except TypeError:
            raise ValueError(f"{codec} codec: buffer {i} is a {type(buf).__name__}, not a bytes-like object") from None
        if not mv.c_contiguous:
            raise ValueError(f"{codec} codec: buffer {i} is not contiguous")
        if mv.nbytes != want:
            raise ValueError(f"{codec} codec: buffer {i} has {mv.nbytes} bytes, expected {want} for this shape")
        try:
            views.append(mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B"))
        except (TypeError, ValueError):
            raise ValueError(f"{codec} codec: buffer {i} has an unusable format {mv.format!r}") from None
    return views


# ---------------------------------------------------------------------------------------------------------------
# fp32 / fp16 / bf16


class FloatCodec(Codec):
    """A plain cast to a float dtype of `itemsize` bytes per element."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name = name
        self.dtype = dtype
        self.itemsize = torch.empty(0, dtype=dtype).element_size()

    def buffer_nbytes(self, shape, meta: dict | None = None) -> tuple[int, ...]:
        _, numel = _check_shape(shape)
        return (numel * self.itemsize,)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Encoded:
        flat = flat_float32(x, self.name)
        if self.dtype == torch.float32:
            _refuse_nonfinite(flat, self.name)
            # The buffers go out as frames without copying, maybe after the caller's next optimizer step: never
            # hand out the caller's own storage.
            wire = flat.clone() if flat.data_ptr() == x.data_ptr() else flat
        else:
            wire = flat.to(self.dtype)
            # Checking after the cast also catches finite values that overflow fp16 (|x| > 65504).
            if not _all_finite(wire):
                _refuse_nonfinite(flat, self.name)
                top = torch.finfo(self.dtype).max
                raise ValueError(f"{self.name} codec: input exceeds the {self.name} range (max {top:g})")
            if self.dtype == torch.bfloat16:
                wire = wire.view(torch.int16)  # numpy has no bf16: ship the raw 2-byte patterns
        return Encoded(self.name, tuple(x.shape), {}, (_byte_view(wire),))

    def decode(self, shape, meta: dict, buffers: Sequence) -> torch.Tensor:
        shape, numel = _check_shape(shape)
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        (raw,) = _byte_buffers(buffers, (numel * self.itemsize,), self.name)
        out = self._to_float32(raw).reshape(shape)
        if not _all_finite(out):
            raise ValueError(f"{self.name} codec: decoded values contain NaN or Inf")
        return out

    def _to_float32(self, raw: memoryview) -> torch.Tensor:
        """A fresh, writable float32 tensor from the wire bytes (a received frame is read-only, and torch would
        warn on a read-only buffer, so the bytes are first copied into torch-owned memory by numpy)."""
        if self.dtype == torch.float32:
            return torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy())
        # numpy's fp16 -> fp32 cast is scalar code; a memcpy into torch and torch's vectorized cast is faster.
        half = torch.empty(len(raw) // 2, dtype=torch.int16)
        half.numpy()[:] = np.frombuffer(raw, dtype="<i2")
        return half.view(self.dtype).float()


# ---------------------------------------------------------------------------------------------------------------
# int8 / int4: block-wise absmax


def _blocks_view(flat: torch.Tensor, block: int) -> torch.Tensor:
    """The flat input as (nblocks, block). A partial last block is zero-padded (a copy, only then): zeros do not
    change a block's absmax and quantize to code 0, and the padding is dropped again before anything is sent."""
    nblocks = -(-flat.numel() // block)
    pad = nblocks * block - flat.numel()
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(nblocks, block)


def _block_absmax(x_nb: torch.Tensor) -> np.ndarray:
    """Per-block max |x| as a float32 numpy vector; a NaN anywhere in a block makes that block's value NaN.

    amax and amin separately, not abs().amax(): two reductions and no full-size temporary. np.maximum, not
    Python's max, which would hide a NaN (max(1.0, nan) is 1.0)."""
    hi = x_nb.amax(dim=1).numpy()
    lo = x_nb.amin(dim=1).numpy()
    return np.maximum(hi, np.negative(lo, out=lo), out=hi)


class BlockQuantCodec(Codec):
    """Symmetric block-wise absmax quantization to `bits` (8 or 4) with float32 scales, or with `half_scales`
    one float32 scale per tensor and 2-byte block scales relative to it (int8h/int4h, `codecs_half`)."""

    def __init__(self, name: str, bits: int, block_size: int = DEFAULT_BLOCK, stochastic: bool = False,
                 half_scales: bool = False):
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if not isinstance(block_size, int) or isinstance(block_size, bool) or not 1 <= block_size <= MAX_BLOCK:
            raise ValueError(f"block_size must be an int in [1, {MAX_BLOCK}], got {block_size!r}")
        self.name = name
        self.bits = bits
        self.qmax = (1 << (bits - 1)) - 1  # 127 or 7: symmetric, so 0 is exact and no code is wasted on bias
        # A larger scale could overflow float32 for the most negative code a hostile sender can put on the wire
        # (-128 for int8, -8 for int4), so encoder and decoder both refuse it: decoded values are then finite by
        # construction and decode needs no pass over them to check.
        self.max_scale = _F32_MAX / (self.qmax + 1)
        self.block_size = block_size
        self.stochastic = bool(stochastic)
        self.half_scales = bool(half_scales)

    def __repr__(self) -> str:
        return (f"BlockQuantCodec({self.name!r}, block_size={self.block_size}, stochastic={self.stochastic}"
                f"{', half_scales=True' if self.half_scales else ''})")

    def _layout(self, numel: int, block: int) -> tuple[int, int]:
        code_bytes, nblocks = numel if self.bits == 8 else (numel + 1) // 2, -(-numel // block)
        return code_bytes, half_scales_nbytes(nblocks) if self.half_scales else 4 * nblocks

    def buffer_nbytes(self, shape, meta: dict | None = None) -> tuple[int, ...]:
        _, numel = _check_shape(shape)
        block = self.block_size if meta is None else _check_block(meta)
        return self._layout(numel, block)

    # -- encode ------------------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Encoded:
        flat = flat_float32(x, self.name)
        x_nb = _blocks_view(flat, self.block_size)
        scale_n, inv_n1 = self._scales(x_nb)
        codes = self._codes(x_nb, inv_n1, generator)[: flat.numel()]  # drop the padding of a partial block
        packed = codes if self.bits == 8 else _pack4(codes)
        return Encoded(self.name, tuple(x.shape), {"block": self.block_size}, (_byte_view(packed), _byte_view(scale_n)))

    def _scales(self, x_nb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scales buffer (float32 per block: what decode multiplies by; or `codecs_half`'s layout) and the
        per-block inverse scale (what encode multiplies by), shape (n, 1). The per-block vectors are small: numpy's
        per-call overhead is lower than torch's."""
        absmax = _block_absmax(x_nb)
        # NaN and Inf propagate through amax and max and fail this one comparison, so it covers the whole input.
        top = absmax.max(initial=0.0)
        if not top <= self.max_scale * self.qmax:
            if not math.isfinite(top):
                raise ValueError(f"{self.name} codec: input has NaN or Inf")
            raise ValueError(f"{self.name} codec: input magnitude {top:g} is too large to quantize")
        # Flooring absmax at _TINY keeps all-zero blocks from dividing by zero (they still decode to exact zeros)
        # and subnormal ones from overflowing qmax / absmax; such blocks are quantized on a _TINY / qmax grid.
        ranged = np.maximum(absmax, np.float32(_TINY))
        if self.half_scales:
            return encode_half_scales(ranged, self.qmax, _TINY)
        qmax = np.float32(self.qmax)
        scale = ranged / qmax
        # Multiplying by qmax/absmax (not dividing by scale) is cheaper; the max element maps to qmax within 1 ulp.
        inv = qmax / ranged
        return torch.from_numpy(scale), torch.from_numpy(inv.reshape(-1, 1))

    def _codes(self, x_nb: torch.Tensor, inv_n1: torch.Tensor, generator) -> torch.Tensor:
        """Flat int8 codes in [-qmax, qmax], padding included."""
        v = torch.mul(x_nb, inv_n1)
        if self.stochastic:
            v.add_(torch.rand(v.shape, generator=generator)).floor_()
            # floor(qmax + 1ulp + u) can reach qmax + 1, which would wrap in int8. Padding stays 0: floor(0 + u) = 0.
            v.clamp_(-self.qmax, self.qmax)
        else:
            v.round_()  # |v| <= qmax * (1 + 1ulp), so rounding cannot leave [-qmax, qmax]
        return v.view(-1).to(torch.int8)

    # -- decode ------------------------------------------------------------------------------------------------

    def decode(self, shape, meta: dict, buffers: Sequence) -> torch.Tensor:
        shape, numel = _check_shape(shape)
        block = _check_block(meta)
        raw_codes, raw_scales = _byte_buffers(buffers, self._layout(numel, block), self.name)
        scale = self._read_scales(raw_scales)
        nblocks = scale.numel()
        out = self._codes_float(raw_codes, nblocks * block)
        out[: nblocks * block].view(nblocks, block).mul_(scale[:, None])
        return (out if out.numel() == numel else out[:numel]).view(shape)

    def _read_scales(self, raw: memoryview) -> torch.Tensor:
        if self.half_scales:
            return decode_half_scales(raw, self.max_scale, self.name)
        scale = np.frombuffer(raw, dtype="<f4").copy()  # copy: writable and aligned
        if scale.size:
            lo, hi = float(scale.min()), float(scale.max())  # NaN propagates, and fails both comparisons below
            if not (lo >= 0 and hi <= self.max_scale):
                if not np.isfinite(scale).all():
                    raise ValueError(f"{self.name} codec: scales contain NaN or Inf")
                raise ValueError(f"{self.name} codec: scales must lie in [0, {self.max_scale:g}], got [{lo:g}, {hi:g}]")
        return torch.from_numpy(scale)

    def _codes_float(self, raw: memoryview, padded: int) -> torch.Tensor:
        """The codes as a fresh float32 tensor of at least `padded` elements, zero past the codes.

        numpy converts straight from the read-only frame (torch.frombuffer would warn on it); the common case
        (whole blocks, even count) is one conversion with no zeroing."""
        codes = np.frombuffer(raw, dtype=np.int8) if self.bits == 8 else _unpack4(raw)
        if codes.size == padded:
            return torch.from_numpy(codes.astype(np.float32))
        out = np.zeros(max(padded, codes.size), dtype=np.float32)
        out[: codes.size] = codes
        return torch.from_numpy(out)


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """Codes in [-7, 7] as nibbles offset by 8 (so 0 is never produced), two per byte, element 2i low.

    Works on byte pairs as little-endian int16 words: contiguous ops, faster than strided even/odd views."""
    nib = (codes + 8).view(torch.uint8)
    if nib.numel() % 2:
        nib = torch.cat([nib, nib.new_zeros(1)])  # odd count: a zero pad nibble, ignored by decode
    w = nib.view(torch.int16)
    return ((w & 0x0F) | ((w >> 4) & 0xF0)).to(torch.uint8)


def _unpack4(raw: memoryview) -> np.ndarray:
    """int8 codes (nibble - 8, two per byte) from a read-only buffer; always within [-8, 7] whatever the bytes.

    Torch's vectorized bit ops are faster here than a numpy 256-entry table gather."""
    packed = torch.empty(len(raw), dtype=torch.uint8)
    packed.numpy()[:] = np.frombuffer(raw, dtype=np.uint8)  # a copy: torch ops need writable memory
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=1).view(-1).view(torch.int8)
    codes -= 8
    return codes.numpy()


# ---------------------------------------------------------------------------------------------------------------


def make_codec(name: str, block_size: int = DEFAULT_BLOCK, stochastic: bool = False) -> Codec:
    """A codec by name; `block_size` and `stochastic` matter only for int8/int4/int8h/int4h."""
    if name == "fp32":
        return FloatCodec("fp32", torch.float32)
    if name == "fp16":
        return FloatCodec("fp16", torch.float16)
    if name == "bf16":
        return FloatCodec("bf16", torch.bfloat16)
    if name == "int8":
        return BlockQuantCodec("int8", 8, block_size, stochastic)
    if name == "int4":
        return BlockQuantCodec("int4", 4, block_size, stochastic)
    if name in ("int8h", "int4h"):
        return BlockQuantCodec(name, 8 if name == "int8h" else 4, block_size, stochastic, half_scales=True)
    raise ValueError(f"unknown codec {name!r}; expected one of {', '.join(CODEC_NAMES)}")
