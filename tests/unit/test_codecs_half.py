"""int8h/int4h (the scales of declora/core/codecs_half.py in codecs.BlockQuantCodec): error bounds at every
magnitude, exact sizes, hostile scales refused, error feedback. The checks every codec shares (dtypes, zeros, NaN
input, wrong buffers, fuzzing) run on them in tests/unit/test_codecs.py, which parametrizes over CODEC_NAMES."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from declora.core.codecs import BlockQuantCodec, make_codec
from declora.core.error_feedback import ErrorFeedback

HALF = ("int8h", "int4h")
QMAX = {"int8h": 127, "int4h": 7}


def gaussian(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def round_trip(codec, x, generator=None):
    enc = codec.encode(x, generator)
    return enc, codec.decode(enc.shape, enc.meta, [bytes(b) for b in enc.buffers])


def rel_rms(x, y):
    return float((x.double() - y.double()).norm() / x.double().norm())


def wire_scales(enc) -> tuple[float, np.ndarray]:
    raw = bytes(enc.buffers[1])
    return float(np.frombuffer(raw, "<f4", count=1)[0]), np.frombuffer(raw, "<f2", offset=4).astype(np.float64)


def step_per_element(enc, numel: int, block: int) -> torch.Tensor:
    S, rel = wire_scales(enc)
    return torch.from_numpy(np.repeat(S * rel, block)[:numel])


def test_factory_builds_them():
    for name, bits in (("int8h", 8), ("int4h", 4)):
        codec = make_codec(name, block_size=128, stochastic=True)
        assert isinstance(codec, BlockQuantCodec) and codec.half_scales and codec.name == name and codec.bits == bits
        assert codec.block_size == 128 and codec.stochastic


# --------------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("sigma", [1.0, 1e-2, 1e-5, 1e-9, 1e-30])
def test_error_matches_float32_scales_at_every_magnitude(name, sigma):
    """fp16 scales measured 99 % error at sigma 1e-6 (benchmarks/README.md); relative ones keep fp32's error."""
    x = gaussian((96, 100), seed=7) * sigma
    ref = rel_rms(x, round_trip(make_codec(name[:4]), x)[1])  # int8 / int4, float32 scales
    got = rel_rms(x, round_trip(make_codec(name), x)[1])
    assert got <= ref * 1.01 + 1e-6, (got, ref)
    assert got <= (0.01 if name == "int8h" else 0.12)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("block", [64, 128, 7])
def test_each_element_within_half_a_step_even_for_tiny_blocks(name, block):
    """Blocks from 1 down to 1e-9 and exact zeros in one tensor: every element is within half its block's step, and
    the step is within fp16's rounding of the block's own (or 2^-24 of the largest step, for the tiniest)."""
    qmax = QMAX[name]
    x = gaussian((40, 130), seed=block)
    flat = x.view(-1)
    nblocks = -(-flat.numel() // block)
    mags = torch.tensor([1.0, 1e-2, 1e-4, 1e-5, 1e-7, 1e-9, 0.0])[torch.arange(nblocks) % 7]
    flat.mul_(mags.repeat_interleave(block)[: flat.numel()])
    enc, y = round_trip(make_codec(name, block_size=block), x)
    step = step_per_element(enc, x.numel(), block).reshape(x.shape)
    err = (x.double() - y.double()).abs()
    assert bool((err <= step / 2 * (1 + 1e-6)).all())
    absmax = torch.nn.functional.pad(flat.abs(), (0, nblocks * block - flat.numel())).view(nblocks, block).amax(1)
    exact = absmax.double() / qmax
    S, rel = wire_scales(enc)
    assert S == pytest.approx(float(absmax.max()) / qmax, rel=1e-6)
    got = torch.from_numpy(S * rel)
    assert bool((got >= exact * (1 - 1e-6)).all())  # rounded up: never a code clamped
    assert bool((got <= exact * (1 + 2.0**-10) + S * 2.0**-24 * (1 + 1e-6)).all())
    assert bool((y.view(-1)[x.view(-1) == 0] == 0).all())  # zeros stay exact zeros
    assert bool((got > 0).all())  # no block's scale flushes to zero


@pytest.mark.parametrize("name", HALF)
def test_no_code_is_clamped_at_the_block_maximum(name):
    """Rounding the relative scale to nearest could make |x| / scale exceed qmax and clamp; rounding up cannot."""
    qmax = QMAX[name]
    gen = torch.Generator().manual_seed(1)
    # Block maxima spread over many fp16 rounding positions, the largest block first (S = its scale).
    x = torch.cat([torch.tensor([1.0]), torch.rand(4095, generator=gen)]).view(-1, 64)
    x[:, 0] = torch.linspace(1.0, 1e-6, 64)
    enc, y = round_trip(make_codec(name), x)
    codes = (y / step_per_element(enc, x.numel(), 64).view_as(y).float()).round()
    assert float(codes.abs().max()) <= qmax
    assert bool(((x - y).abs() <= step_per_element(enc, x.numel(), 64).view_as(x) / 2 * (1 + 1e-6)).all())


@pytest.mark.parametrize("name", HALF)
def test_zeros_empty_and_subnormal_inputs(name):
    codec = make_codec(name)
    for x in (torch.zeros(100), torch.zeros(0), torch.zeros(3, 0), torch.full((65,), 1e-42), torch.full((5,), -3.0)):
        enc, y = round_trip(codec, x)
        assert y.shape == x.shape and bool(torch.isfinite(y).all())
        if x.numel():  # a subnormal block is quantized on a 2^-100 / qmax grid, as in int8/int4
            assert float((x - y).abs().max()) <= max(float(x.abs().max()) / QMAX[name] / 2, 2.0**-100)
    top = float(np.finfo(np.float32).max) / 2
    y = round_trip(codec, torch.tensor([top, -top, 1.0]))[1]
    torch.testing.assert_close(y[:2], torch.tensor([top, -top]), rtol=1e-6, atol=0)  # near float32's top: finite


@pytest.mark.parametrize("name", HALF)
def test_stochastic_rounding_is_unbiased(name):
    x = gaussian((64,), seed=3) * 1e-6
    codec = make_codec(name, stochastic=True)
    gen = torch.Generator().manual_seed(0)
    mean = torch.stack([round_trip(codec, x, gen)[1] for _ in range(2000)]).mean(0)
    step = float(x.abs().max()) / QMAX[name]
    assert float((mean - x).abs().max()) <= 0.1 * step


# --------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("shape,block,int8h,int4h", [
    ((8, 384), 64, 3072 + 4 + 2 * 48, 1536 + 4 + 2 * 48),
    ((384, 8), 128, 3072 + 4 + 2 * 24, 1536 + 4 + 2 * 24),
    ((2, 384), 64, 768 + 4 + 2 * 12, 384 + 4 + 2 * 12),
    ((2,), 64, 2 + 4 + 2, 1 + 4 + 2),
    ((3, 3), 4, 9 + 4 + 2 * 3, 5 + 4 + 2 * 3),  # odd count: a pad nibble; a partial last block
    ((0,), 64, 0 + 4, 0 + 4),
])
def test_exact_encoded_sizes(shape, block, int8h, int4h):
    for name, want in (("int8h", int8h), ("int4h", int4h)):
        codec = make_codec(name, block_size=block)
        assert codec.encoded_nbytes(shape) == want
        enc = codec.encode(gaussian(shape))
        assert enc.nbytes == want and enc.meta == {"block": block}
        assert codec.buffer_nbytes(shape, {"block": block}) == tuple(memoryview(b).nbytes for b in enc.buffers)


def test_two_bytes_per_block_fewer_than_float32_scales():
    shape = (16, 4096)
    for bits in ("8", "4"):
        assert make_codec(f"int{bits}").encoded_nbytes(shape) - make_codec(f"int{bits}h").encoded_nbytes(shape) \
            == 2 * 1024 - 4


def test_wire_format_golden_bytes():
    x = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.25, 0.0, 0.0, 0.0])
    enc = make_codec("int8h", block_size=4).encode(x)  # block maxima 1 and 0.25: S = 1/127, r = (1, 0.25)
    assert bytes(enc.buffers[0]) == bytes([127, 129, 64, 0, 127, 0, 0, 0])  # round(63.5) = 64 (half to even)
    assert bytes(enc.buffers[1]) == np.array([1 / 127], "<f4").tobytes() + np.array([1.0, 0.25], "<f2").tobytes()
    # int4h: S = float32(1/7), so 0.5 / S = 3.4999998 and rounds to 3 (int4's exact 7 / 1 gives round(3.5) = 4).
    enc = make_codec("int4h", block_size=4).encode(x)  # codes 7, -7, 3, 0 | 7, 0, 0, 0 as nibbles + 8
    assert bytes(enc.buffers[0]) == bytes([0x1F, 0x8B, 0x8F, 0x88])


# --------------------------------------------------------------------------------------------- hostile input


def valid(name, shape=(5, 30), block=8):
    codec = make_codec(name, block_size=block)
    enc = codec.encode(gaussian(shape))
    return codec, enc, [bytes(b) for b in enc.buffers]


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("S", [float("nan"), float("inf"), float("-inf"), -1.0, -1e-30, 3e38])
def test_decode_rejects_bad_tensor_scale(name, S):
    codec, enc, bufs = valid(name)
    bufs[1] = np.array([S], "<f4").tobytes() + bufs[1][4:]
    with pytest.raises(ValueError, match="tensor scale"):
        codec.decode(enc.shape, enc.meta, bufs)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("r", [float("nan"), float("inf"), float("-inf"), -1.0, -2.0**-24, 1.001, 65504.0])
@pytest.mark.parametrize("where", [0, -1])
def test_decode_rejects_bad_relative_scales(name, r, where):
    codec, enc, bufs = valid(name)
    rel = np.frombuffer(bufs[1], "<f2", offset=4).copy()
    rel[where] = r
    bufs[1] = bufs[1][:4] + rel.tobytes()
    with pytest.raises(ValueError, match="relative scales"):
        codec.decode(enc.shape, enc.meta, bufs)


@pytest.mark.parametrize("name", HALF)
def test_decode_rejects_wrong_sizes_and_float32_scale_layouts(name):
    codec, enc, bufs = valid(name)
    for i, delta in ((0, 1), (0, -1), (1, 2), (1, -2), (1, -4)):
        changed = list(bufs)
        changed[i] = bytes(len(bufs[i]) + delta)
        with pytest.raises(ValueError, match=f"buffer {i} has"):
            codec.decode(enc.shape, enc.meta, changed)
    # An int8 message relabelled int8h: its float32 scales have the wrong length for this layout.
    plain = make_codec(name[:4], block_size=8).encode(gaussian((5, 30)))
    with pytest.raises(ValueError, match="buffer 1 has"):
        codec.decode(plain.shape, plain.meta, [bytes(b) for b in plain.buffers])


@pytest.mark.parametrize("name", HALF)
def test_decode_extremes_that_pass_stay_finite(name):
    """The largest S a sender may claim, with r = 1 and the most negative code: still finite, no overflow."""
    codec, enc, bufs = valid(name)
    bufs[1] = np.array([codec.max_scale], "<f4").tobytes() + np.ones(len(bufs[1][4:]) // 2, "<f2").tobytes()
    bufs[0] = bytes([0x80]) * len(bufs[0]) if name == "int8h" else bytes(len(bufs[0]))  # -128 / -8 everywhere
    y = codec.decode(enc.shape, enc.meta, bufs)
    assert bool(torch.isfinite(y).all())


# --------------------------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("name", HALF)
def test_error_feedback_keeps_running_sums_together(name):
    """What receivers decoded over rounds sums to what was sent minus the last residual (within one step), also for
    a tensor whose magnitude falls from 1 to 1e-9 across rounds, where plain fp16 scales would flush."""
    codec = make_codec(name)
    ef = ErrorFeedback(codec)
    sent = torch.zeros(32, 48, dtype=torch.float64)
    got = torch.zeros_like(sent)
    for t in range(30):
        x = gaussian((32, 48), seed=t) * 10.0 ** -(t % 10)
        before = ef.residual("w")
        target = x + (before if before is not None else 0)
        enc, decoded = ef.encode("w", x)
        assert enc.codec == name
        assert torch.equal(decoded, codec.decode(enc.shape, enc.meta, [bytes(b) for b in enc.buffers]))
        sent += x.double()
        got += decoded.double()
        assert torch.allclose(sent - got, ef.residual("w").double(), atol=1e-5)  # float32 sums of O(1) values
        # The residual is what this round's quantization lost: half a step of what it quantized.
        bound = float(target.abs().max()) / QMAX[name] / 2 * (1 + 2.0**-9) + 1e-12
        assert float(ef.residual("w").abs().max()) <= bound
    state = ef.state_dict()
    assert state["codec"] == name
    other = ErrorFeedback(make_codec(name))
    other.load_state_dict(state)
    assert torch.equal(other.residual("w"), ef.residual("w"))
