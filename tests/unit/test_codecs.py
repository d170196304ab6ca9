"""Codecs: accuracy, exact sizes, stochastic rounding, error feedback, and decode against hostile input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declora.core.codecs import CODEC_NAMES, MAX_BLOCK, Encoded, make_codec
from declora.core.error_feedback import ErrorFeedback

QUANT = ("int8", "int4")
BLOCKED = ("int8", "int4", "int8h", "int4h")  # every block-quantized codec (tests/unit/test_codecs_half.py: the h ones)
FLOAT = ("fp32", "fp16", "bf16")
QMAX = {"int8": 127, "int4": 7}


def gaussian(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def round_trip(codec, x, generator=None):
    """Encode, then decode from immutable bytes, as a receiver holding ZeroMQ frames would."""
    enc = codec.encode(x, generator)
    return enc, codec.decode(enc.shape, enc.meta, [bytes(b) for b in enc.buffers])


def rel_rms(x, y):
    return float((x.double() - y.double()).norm() / x.double().norm())


def block_scales(enc: Encoded) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(bytes(enc.buffers[1]), dtype="<f4").copy())


def per_element(scale_per_block: torch.Tensor, numel: int, block: int) -> torch.Tensor:
    return scale_per_block.repeat_interleave(block)[:numel]


# --------------------------------------------------------------------------------------------- construction


def test_names_and_factory():
    assert CODEC_NAMES == ("fp32", "fp16", "bf16", "int8", "int4", "int8h", "int4h")
    for name in CODEC_NAMES:
        assert make_codec(name).name == name
    with pytest.raises(ValueError, match="unknown codec"):
        make_codec("int3")
    for bad in (0, -1, MAX_BLOCK + 1, 2.0, True):
        with pytest.raises(ValueError, match="block_size"):
            make_codec("int8", block_size=bad)


# --------------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("shape", [(16, 4096), (4096, 16), (100_003,), (333, 77), (8, 1000)])
def test_quantized_rel_rms_on_gaussian(shape):
    x = gaussian(shape, seed=sum(shape))
    assert rel_rms(x, round_trip(make_codec("int8"), x)[1]) <= 0.01
    assert rel_rms(x, round_trip(make_codec("int4"), x)[1]) <= 0.12


@pytest.mark.parametrize("name,bound", [("int8", 0.01), ("int4", 0.12)])
@pytest.mark.parametrize("block", [16, 64, 100])  # int4 at block 256 exceeds 0.12: the bound is for small blocks
def test_quantized_rel_rms_other_blocks_and_stochastic(name, block, bound):
    x = gaussian((50, 97), seed=block)  # 4850 elements: a partial last block for every block size here
    codec = make_codec(name, block_size=block)
    assert rel_rms(x, round_trip(codec, x)[1]) <= bound
    # Stochastic rounding trades bias for variance: its error is larger, but within about sqrt(2) of that bound.
    sr = make_codec(name, block_size=block, stochastic=True)
    assert rel_rms(x, round_trip(sr, x, torch.Generator().manual_seed(1))[1]) <= bound * 1.5


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(QUANT),
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
    block=st.integers(1, 130),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**16),
    log_scale=st.integers(-30, 30),
)
def test_quantized_error_within_one_step_per_element(name, shape, block, stochastic, seed, log_scale):
    """Whatever the input: deterministic rounding is off by at most half a step, stochastic by under one step."""
    x = gaussian(shape, seed) * 2.0**log_scale
    codec = make_codec(name, block_size=block, stochastic=stochastic)
    enc, y = round_trip(codec, x, torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and y.dtype == torch.float32
    step = per_element(block_scales(enc), x.numel(), block).reshape(x.shape)
    bound = step * (1.0 if stochastic else 0.5) * (1 + 1e-5) + 1e-30
    assert bool(((y - x).abs() <= bound).all())
    assert enc.nbytes == codec.encoded_nbytes(x.shape)


def test_float_codecs_precision():
    x = gaussian((37, 129))
    assert torch.equal(round_trip(make_codec("fp32"), x)[1], x)
    # Round to nearest: relative error at most half an ulp, 2^-11 for fp16 and 2^-8 for bf16 (normal range).
    for name, eps in (("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        y = round_trip(make_codec(name), x)[1]
        assert bool(((y - x).abs() <= x.abs() * eps * 1.0001).all()), name
        enc = make_codec(name).encode(x)
        assert enc.nbytes == 2 * x.numel()


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_input_dtypes_layouts_and_output_form(name):
    codec = make_codec(name)
    base = gaussian((64, 48))
    for x in (base.double(), base.half(), base.bfloat16(), base.t(), base[:, ::2]):  # incl. non-contiguous
        enc, y = round_trip(codec, x)
        assert y.dtype == torch.float32 and y.device.type == "cpu" and y.shape == x.shape
        assert enc.shape == tuple(x.shape) and all(type(d) is int for d in enc.shape)
        ref = x.float()
        assert rel_rms(ref, y) <= (0.12 if name.startswith("int4") else 0.01)
    with pytest.raises(ValueError, match="floating-point"):
        codec.encode(torch.arange(10))
    with pytest.raises(ValueError, match="torch.Tensor"):
        codec.encode([1.0, 2.0])


@pytest.mark.gpu
@pytest.mark.parametrize("name", CODEC_NAMES)
def test_cuda_input_is_moved_to_cpu(name):
    x = gaussian((16, 256)).cuda()
    enc, y = round_trip(make_codec(name), x)
    assert y.device.type == "cpu"
    assert rel_rms(x.cpu(), y) <= (0.12 if name.startswith("int4") else 0.01)


@pytest.mark.filterwarnings("error")  # e.g. a division by zero in the scales of an all-zero block
@pytest.mark.parametrize("name", CODEC_NAMES)
def test_zeros_and_constants_round_trip(name):
    codec = make_codec(name)
    for shape in ((0,), (), (1,), (130,), (7, 9)):
        z = torch.zeros(shape)
        assert torch.equal(round_trip(codec, z)[1], z)
    for c in (1.0, -3.5, 0.1, 1e-20, 1e5):
        if name == "fp16" and not 6.2e-5 < abs(c) < 65504:
            continue  # outside fp16's normal range: not a round-trip fp16 promises
        x = torch.full((3, 100), c)
        y = round_trip(codec, x)[1]
        tol = {"fp32": 0.0, "fp16": 2.0**-11, "bf16": 2.0**-8}.get(name, 1e-6)  # a constant is its block's absmax
        assert bool(((y - c).abs() <= abs(c) * tol).all()), (name, c)
    if name in BLOCKED:  # zeros are code 0 (stored as nibble 8 in int4), not some other code times a zero scale
        assert set(bytes(make_codec(name).encode(torch.zeros(64)).buffers[0])) == {0 if name[:4] == "int8" else 0x88}
    # A block of zeros between non-zero blocks stays exactly zero.
    x = gaussian((256,))
    x[64:128] = 0
    assert bool((round_trip(codec, x)[1][64:128] == 0).all())


@pytest.mark.filterwarnings("error")
def test_subnormal_and_tiny_blocks_stay_finite_and_accurate():
    x = torch.cat([torch.full((64,), 1e-40), gaussian((64,)) * 1e-33, gaussian((64,))])
    for name in QUANT:
        y = round_trip(make_codec(name), x)[1]
        assert bool(torch.isfinite(y).all())
        assert float((y - x).abs()[:128].max()) < 1e-30


# --------------------------------------------------------------------------------------------- refusing bad input


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 4095, 4100 * 3 - 1])
def test_nan_inf_input_refused(name, bad, where):
    x = gaussian((3, 4100))  # the last block is partial for block 64; `where` hits first, middle, last
    x.view(-1)[where] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        make_codec(name).encode(x)


def test_out_of_range_input_refused():
    with pytest.raises(ValueError, match="range"):
        make_codec("fp16").encode(torch.tensor([1.0, 7e4]))
    assert bool(torch.isfinite(round_trip(make_codec("bf16"), torch.tensor([3e38]))[1]).all())
    for name in QUANT:
        y = round_trip(make_codec(name), torch.tensor([1e38, -2e38, 1.0]))[1]
        assert bool(torch.isfinite(y).all())
        with pytest.raises(ValueError, match="too large"):
            make_codec(name).encode(torch.tensor([3.4e38]))


def test_wire_format_golden_bytes():
    """Pins the byte layout another implementation (or an older peer) must agree on."""
    x = torch.tensor([1.0, -1.0, 0.5, 0.0])
    scale = np.float32(1 / 7).tobytes()
    enc = make_codec("int4", block_size=4).encode(x)  # codes 7, -7, round(3.5) = 4 (half to even), 0
    assert enc.meta == {"block": 4}
    assert [bytes(b) for b in enc.buffers] == [bytes([0x1F, 0x8C]), scale]  # nibbles + 8, element 2i low
    enc = make_codec("int8", block_size=4).encode(x)  # codes 127, -127, round(63.5) = 64, 0
    assert [bytes(b) for b in enc.buffers] == [bytes([0x7F, 0x81, 0x40, 0x00]), np.float32(1 / 127).tobytes()]
    assert bytes(make_codec("fp16").encode(x).buffers[0])[:4] == bytes([0x00, 0x3C, 0x00, 0xBC])
    assert bytes(make_codec("bf16").encode(x).buffers[0])[:4] == bytes([0x80, 0x3F, 0x80, 0xBF])
    assert bytes(make_codec("fp32").encode(x).buffers[0]) == np.array([1, -1, 0.5, 0], dtype="<f4").tobytes()


def test_stochastic_rounding_never_wraps_around():
    """v = qmax exactly plus U close to 1 rounds up to qmax + 1 in float32 (~1 in 2^17 for int8): it must be
    clamped, not wrapped to -128."""
    x = torch.ones(1 << 20)
    y = round_trip(make_codec("int8", stochastic=True), x, torch.Generator().manual_seed(0))[1]
    assert float((y - 1).abs().max()) < 1e-6


# --------------------------------------------------------------------------------------------- sizes


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(CODEC_NAMES),
    shape=st.lists(st.integers(0, 70), min_size=0, max_size=3),
    block=st.integers(1, 200),
)
def test_encoded_nbytes_is_exact(name, shape, block):
    codec = make_codec(name, block_size=block)
    enc = codec.encode(gaussian(shape))
    assert enc.nbytes == codec.encoded_nbytes(shape) == codec.encoded_nbytes(torch.Size(shape))
    assert tuple(memoryview(b).nbytes for b in enc.buffers) == codec.buffer_nbytes(shape)
    # The buffers are flat byte views, ready to be frames: len() is the byte count.
    assert all(isinstance(b, memoryview) and b.format == "B" and len(b) == b.nbytes for b in enc.buffers)
    assert all(type(v) in (int, float, str) for v in enc.meta.values())
    assert enc.codec == name


def test_sizes_for_the_llama_adapter_shapes():
    for shape in ((16, 4096), (4096, 16)):
        assert make_codec("fp32").encoded_nbytes(shape) == 262144
        assert make_codec("bf16").encoded_nbytes(shape) == 131072
        assert make_codec("int8").encoded_nbytes(shape) == 65536 + 4 * 1024
        assert make_codec("int4").encoded_nbytes(shape) == 32768 + 4 * 1024
        assert make_codec("int8", block_size=128).encoded_nbytes(shape) == 65536 + 4 * 512
    assert make_codec("int4").encoded_nbytes((3, 3)) == 5 + 4  # odd count: a pad nibble; one partial block


def test_encoded_buffers_do_not_alias_the_input():
    for name in CODEC_NAMES:
        codec = make_codec(name)
        x = gaussian((32, 64))
        enc = codec.encode(x)
        before = codec.decode(enc.shape, enc.meta, enc.buffers)
        x.mul_(3.0)  # the caller's next optimizer step
        assert torch.equal(codec.decode(enc.shape, enc.meta, enc.buffers), before), name


# --------------------------------------------------------------------------------------------- stochastic rounding


def crafted_biased_input(qmax: int, blocks: int = 64) -> torch.Tensor:
    """`blocks` blocks of 64: absmax 1 (so scale = 1/qmax) and every other value 0.1 of a step above a grid point,
    which round-to-nearest always rounds down: a bias of -0.1 step on 63/64 of the elements."""
    x = torch.full((blocks, 64), (round(0.3 * qmax) + 0.1) / qmax)
    x[:, 0] = 1.0
    return x


@pytest.mark.parametrize("name", QUANT)
def test_stochastic_rounding_is_unbiased(name):
    qmax = QMAX[name]
    step = 1.0 / qmax
    det = make_codec(name)
    x1 = crafted_biased_input(qmax, blocks=1)
    bias_det = float((round_trip(det, x1)[1] - x1).mean())
    assert bias_det < -0.09 * step * 63 / 64  # deterministic rounding: biased, the same way every time

    # 300 independent stochastic encodings of that block: 20 encode calls of 15 copies each (each block draws its
    # own noise, so a copy is as good as a repeat, and far fewer calls keep the test fast).
    sr = make_codec(name, stochastic=True)
    gen = torch.Generator().manual_seed(0)
    x = crafted_biased_input(qmax, blocks=15)
    errors = torch.cat([round_trip(sr, x, gen)[1] - x for _ in range(20)])  # (300, 64): repeat x element
    mean_err = errors.mean(dim=0)
    # Pooled mean error: its standard error is ~0.3 step / sqrt(300 * 63) ~ 2e-3 step; bias_det is 0.1 step.
    assert abs(float(mean_err[1:].mean())) < 0.01 * step
    # Per element: each mean's standard error is ~0.3 step / sqrt(300) ~ 0.017 step; none keeps the bias.
    assert float(mean_err.abs().max()) < 0.07 * step


def test_stochastic_rounding_is_reproducible_with_a_generator():
    sr = make_codec("int8", stochastic=True)
    x = gaussian((4, 1000))
    a = round_trip(sr, x, torch.Generator().manual_seed(7))[1]
    b = round_trip(sr, x, torch.Generator().manual_seed(7))[1]
    c = round_trip(sr, x, torch.Generator().manual_seed(8))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("name", QUANT)
def test_error_feedback_keeps_running_sums_together(name):
    qmax = QMAX[name]
    step = 1.0 / qmax  # every block of the crafted input has absmax 1
    x = crafted_biased_input(qmax, blocks=4)
    codec = make_codec(name)
    ef = ErrorFeedback(codec)
    sum_in = torch.zeros_like(x)
    sum_ef = torch.zeros_like(x)
    sum_plain = torch.zeros_like(x)
    rounds = 100
    for t in range(rounds):
        _, dec = ef.encode("layer.0.A", x)
        sum_in += x
        sum_ef += dec
        sum_plain += round_trip(codec, x)[1]
        # The gap is exactly the residual the sender holds, and stays within one quantization step.
        gap = sum_in - sum_ef
        torch.testing.assert_close(gap, ef.residual("layer.0.A"), atol=1e-4 * (t + 1), rtol=0)
        assert float(gap.abs().max()) <= step * 1.0001 + 1e-4 * (t + 1), t
    # Without error feedback the same input drifts linearly, 0.1 step per round: ~10 steps after 100 rounds.
    assert float((sum_in - sum_plain).abs().max()) > 0.09 * rounds * step


def test_error_feedback_on_random_inputs_does_not_grow():
    ef = ErrorFeedback(make_codec("int4", stochastic=False))
    gen = torch.Generator().manual_seed(3)
    gap = torch.zeros(8, 256)
    worst = []
    for t in range(60):
        x = torch.randn(8, 256, generator=gen) + 0.05  # a small common drift, like a gradient direction
        _, dec = ef.encode("k", x)
        gap += x - dec
        worst.append(float(gap.abs().max()))
    # Bounded by a step of the last message (absmax of a block of ~N(0.05, 1) over 7, ~0.5), not growing with t.
    assert max(worst[30:]) < 1.0
    assert max(worst[30:]) <= 1.5 * max(worst[:30])


def test_error_feedback_state():
    codec = make_codec("int8")
    ef = ErrorFeedback(codec)
    x = gaussian((16, 64))
    ef.encode("a", x)
    ef.encode("b", x * 2)
    state = ef.state_dict()
    assert state["codec"] == "int8" and set(state["residuals"]) == {"a", "b"}

    twin = ErrorFeedback(codec)
    twin.load_state_dict(state)
    y = gaussian((16, 64), seed=1)
    enc1, dec1 = ef.encode("a", y)
    enc2, dec2 = twin.encode("a", y)
    assert torch.equal(dec1, dec2) and [bytes(b) for b in enc1.buffers] == [bytes(b) for b in enc2.buffers]
    # The saved state is a copy: later rounds do not change it.
    assert not torch.equal(state["residuals"]["a"], ef.residual("a"))

    ef.reset("a")
    assert ef.residual("a") is None and ef.residual("b") is not None
    ef.reset()
    assert ef.residual("b") is None

    # A shape change (say, a new rank) starts that key afresh instead of adding a mismatched residual.
    ef.encode("a", x)
    _, dec = ef.encode("a", gaussian((8, 64)))
    assert dec.shape == (8, 64) and ef.residual("a").shape == (8, 64)

    # A NaN message is refused and leaves the residual as it was.
    before = ef.residual("a").clone()
    with pytest.raises(ValueError, match="NaN"):
        ef.encode("a", torch.full((8, 64), float("nan")))
    assert torch.equal(ef.residual("a"), before)

    for bad in ({}, {"residuals": {"a": [1.0]}}, {"residuals": {"a": torch.tensor([float("inf")])}}, None,
                {"residuals": {3: torch.zeros(2)}}):
        with pytest.raises(ValueError):
            ErrorFeedback(codec).load_state_dict(bad)


# --------------------------------------------------------------------------------------------- hostile decode


def valid_message(name, shape=(5, 30), block=16):
    codec = make_codec(name, block_size=block)
    enc = codec.encode(gaussian(shape))
    return codec, enc, [bytearray(b) for b in enc.buffers]


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_rejects_wrong_buffers(name):
    codec, enc, bufs = valid_message(name)
    with pytest.raises(ValueError, match="buffer"):
        codec.decode(enc.shape, enc.meta, bufs + [b""])
    with pytest.raises(ValueError, match="buffer"):
        codec.decode(enc.shape, enc.meta, bufs[:-1])
    for i in range(len(bufs)):
        for delta in (-1, 1):
            changed = list(bufs)
            changed[i] = bytes(len(bufs[i]) + delta)
            with pytest.raises(ValueError, match=f"buffer {i} has"):
                codec.decode(enc.shape, enc.meta, changed)
    with pytest.raises(ValueError, match="bytes-like"):
        codec.decode(enc.shape, enc.meta, [42] * len(bufs))
    with pytest.raises(ValueError, match="bytes-like"):
        codec.decode(enc.shape, enc.meta, ["x" * len(b) for b in bufs])
    with pytest.raises(ValueError, match="list or tuple"):
        codec.decode(enc.shape, enc.meta, bufs[0])
    strided = [np.frombuffer(bytes(2 * len(b)), dtype=np.uint8)[::2] for b in bufs]  # right length, not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        codec.decode(enc.shape, enc.meta, strided)
    # Someone else's shape for these buffers.
    with pytest.raises(ValueError):
        codec.decode((5, 31), enc.meta, bufs)


@pytest.mark.parametrize("shape", [(-1, 3), (True, 2), (2.0,), "12", None, (1,) * 40, (2**50,), ((2,),),
                                   (2**40, 2**40, 0), (0, 2**30, 2**30)])
def test_decode_rejects_bad_shapes(shape):
    codec = make_codec("int8")
    # Empty buffers: right-sized for any empty shape, so only the shape check itself can say no.
    with pytest.raises(ValueError, match="bad shape|shape must|dimensions, more"):
        codec.decode(shape, {"block": 64}, [b"", b""])


@pytest.mark.parametrize("name", QUANT)
@pytest.mark.parametrize("meta", [{}, {"block": 0}, {"block": -64}, {"block": 2**21}, {"block": 2**64},
                                  {"block": 16.0}, {"block": "16"}, {"block": True}, {"block": None}, [16], None])
def test_decode_rejects_bad_block_meta(name, meta):
    codec, enc, bufs = valid_message(name)
    with pytest.raises(ValueError, match="meta"):
        codec.decode(enc.shape, meta, bufs)


@pytest.mark.parametrize("name", QUANT)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), -1.0, 3e38, -0.0 - 1e-30])
def test_decode_rejects_bad_scales(name, value):
    codec, enc, bufs = valid_message(name)
    scales = np.frombuffer(bufs[1], dtype="<f4").copy()
    scales[len(scales) // 2] = value
    with pytest.raises(ValueError, match="scales"):
        codec.decode(enc.shape, enc.meta, [bufs[0], scales.tobytes()])


@pytest.mark.parametrize("name,wire", [("fp32", "<f4"), ("fp16", "<f2")])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_decode_rejects_nonfinite_float_payloads(name, wire, value):
    codec, enc, _ = valid_message(name)
    payload = np.zeros(150, dtype=wire)
    payload[149] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.decode(enc.shape, enc.meta, [payload.tobytes()])


def test_decode_rejects_nonfinite_bf16_payload():
    codec, enc, _ = valid_message("bf16")
    bits = np.zeros(150, dtype="<u2")
    bits[0] = 0x7FC0  # a bf16 NaN
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.decode(enc.shape, enc.meta, [bits.tobytes()])


@pytest.mark.filterwarnings("error")  # torch warns on read-only buffers; decode must not trigger that
@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_accepts_any_buffer_type_and_owns_its_result(name):
    codec, enc, bufs = valid_message(name)
    ref = codec.decode(enc.shape, enc.meta, enc.buffers)
    # Unaligned: each buffer copied to offset 1 of a larger bytes object, then sliced.
    unaligned = [memoryview(b"\0" + bytes(b))[1:] for b in bufs]
    as_numpy = [np.frombuffer(bytes(b), dtype=np.uint8) for b in bufs]
    # Arrays with 2-byte items: len() of their memoryview counts items, not bytes.
    wide_items = [np.frombuffer(bytes(b), dtype=np.uint16 if len(b) % 2 == 0 else np.uint8) for b in bufs]
    for variant in (bufs, [bytes(b) for b in bufs], unaligned, as_numpy, wide_items, tuple(enc.buffers)):
        assert torch.equal(codec.decode(enc.shape, enc.meta, variant), ref)
    out = codec.decode(enc.shape, enc.meta, bufs)
    for b in bufs:
        b[:] = bytes(len(b))  # the frame's memory is reused after decode
    assert torch.equal(out, ref)
    out += 1  # and the result is writable


def test_decode_tolerates_codes_the_encoder_never_makes():
    """-128 (int8) and nibble 0 (int4: -8) are never produced, but decode must give finite values for them."""
    for name, code_bytes in (("int8", bytes([0x80]) * 64), ("int4", bytes([0x00]) * 32)):
        codec = make_codec(name)
        scale = np.array([codec.max_scale], dtype="<f4").tobytes()
        y = codec.decode((64,), {"block": 64}, [code_bytes, scale])
        assert bool(torch.isfinite(y).all()) and float(y.min()) < 0


def _shapes():
    good = st.lists(st.integers(0, 12), min_size=0, max_size=3)
    # Empty but enormous: (0, 2^40, ...) must not reach torch's int64 stride arithmetic.
    empty_huge = st.lists(st.sampled_from([0, 1, 2**20, 2**40, 2**63]), min_size=1, max_size=6)
    junk = st.one_of(
        st.lists(st.one_of(st.integers(-3, 2**70), st.booleans(), st.floats(), st.text(max_size=2), st.none()),
                 max_size=4),
        st.integers(), st.text(max_size=3), st.none(), st.tuples(st.tuples(st.integers(0, 3))),
    )
    return st.one_of(good, good, junk, empty_huge)


def _metas():
    block = st.one_of(st.integers(-5, 70), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3),
                      st.booleans(), st.none())
    return st.one_of(
        st.fixed_dictionaries({"block": block}),
        st.dictionaries(st.text(max_size=6), st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
        st.none(), st.integers(), st.lists(st.integers(), max_size=2),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(CODEC_NAMES), shape=_shapes(), meta=_metas(), data=st.data())
def test_fuzz_decode_only_raises_value_error(name, shape, meta, data):
    codec = make_codec(name)
    # Half the time the buffers have exactly the right sizes for this shape and meta (when those are valid), so
    # the fuzzing reaches the content checks (scales, NaN/Inf) and not only the size checks.
    sizes = None
    try:
        sizes = codec.buffer_nbytes(shape, meta if name in BLOCKED else None)
    except (ValueError, TypeError):
        pass
    if sizes is not None and max(sizes, default=0) <= 4096 and data.draw(st.booleans()):
        buffers = [data.draw(st.binary(min_size=n, max_size=n)) for n in sizes]
        if name in QUANT and data.draw(st.booleans()):
            # Plausible scales (finite, small) so that decoding can actually succeed on random codes.
            n_scales = sizes[1] // 4
            scales = data.draw(st.lists(st.floats(0, 2.0**100, width=32), min_size=n_scales, max_size=n_scales))
            buffers[1] = np.array(scales, dtype="<f4").tobytes()
        elif name in BLOCKED and name not in QUANT and data.draw(st.booleans()):
            # int8h/int4h: a plausible tensor scale, then relative scales in [0, 1].
            n_rel = (sizes[1] - 4) // 2
            rel = data.draw(st.lists(st.floats(0, 1, width=16), min_size=n_rel, max_size=n_rel))
            top = data.draw(st.floats(0, 2.0**100, width=32))
            buffers[1] = np.array([top], dtype="<f4").tobytes() + np.array(rel, dtype="<f2").tobytes()
    else:
        buffers = data.draw(st.one_of(
            st.lists(st.binary(max_size=64), max_size=3),
            st.lists(st.one_of(st.binary(max_size=8), st.integers(), st.text(max_size=3), st.none()), max_size=3),
            st.binary(max_size=8), st.none(),
        ))
    try:
        out = codec.decode(shape, meta, buffers)
    except ValueError:
        return
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert tuple(out.shape) == tuple(shape)
    assert out.numel() == 0 or bool(torch.isfinite(out).all())


@pytest.mark.parametrize("module", ["codecs", "codecs_half"])
def test_module_stays_pure(module):
    """The codecs import neither zmq nor msgpack nor anything above them (DESIGN.md section 3)."""
    import ast
    import importlib

    mod = importlib.import_module(f"declora.core.{module}")
    tree = ast.parse(open(mod.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    own = {m for m in imported if m.startswith("declora.")}
    assert own <= ({"declora.core.codecs_half"} if module == "codecs" else set()), own
    top = {m.split(".")[0] for m in imported - own}
    assert top <= {"__future__", "math", "sys", "dataclasses", "typing", "numpy", "torch"}, top
