"""Property-based fuzzing of protocol.from_frames: whatever arrives, only ProtocolError may come out.

Three generators, 400 examples each (1,200 in all): random bytes, random msgpack headers built from the real schema's
field names, and mutations of valid messages (bytes flipped, frames dropped/duplicated/truncated, fields replaced).
Every accepted message must also decode to finite float32 tensors of the shapes its header states.
"""
import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declora.core.factors import Adapter, LoraFactor
from declora.wire.adapter_messages import encode_adapter, message_to_adapter
from declora.wire.protocol import (
    HEADER_KEYS,
    TENSOR_KEYS,
    AdapterLayout,
    Kind,
    Limits,
    ProtocolError,
    from_frames,
    make_message,
    to_frames,
)

EXAMPLES = 400
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_message_bytes=1 << 20, max_tensors=64, max_rank=64, max_header_bytes=64 << 10)


def _adapter():
    g = torch.Generator().manual_seed(1)
    return Adapter({"m.0": LoraFactor(torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g), 4.0),
                    "m.1": LoraFactor(torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g), 4.0)},
                   {"head": torch.randn(3, generator=g)})


ADAPTER = _adapter()
LAYOUT = AdapterLayout.from_adapter(ADAPTER, max_rank=8)
VALID = {codec: [bytes(memoryview(f).cast("B"))
                 for f in to_frames(make_message(Kind.FACTORS, 1, 3, encode_adapter(ADAPTER, codec)))]
         for codec in ("fp32", "fp16", "bf16", "int8", "int4")}


def check(frames, layout=None):
    """Feed the decoder; only ProtocolError may escape, and what is accepted must be sound."""
    try:
        msg = from_frames(frames, layout=layout, limits=LIMITS)
    except ProtocolError as e:
        assert e.reason and str(e)
        return None
    for t in msg.tensors:
        assert t.value is not None and t.value.dtype == torch.float32
        assert tuple(t.value.shape) == tuple(t.encoded.shape)
        assert bool(torch.isfinite(t.value).all())
    if msg.kind in (Kind.FACTORS, Kind.UPDATE, Kind.AGGREGATE):
        message_to_adapter(msg)  # a message that passed validation always assembles into an Adapter
    return msg


msgpack_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                         st.text(max_size=20), st.binary(max_size=20))
msgpack_value = st.recursive(msgpack_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                  st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                             max_leaves=12)
field_value = st.one_of(msgpack_value, st.sampled_from([1, 0, "factors", "ping", "hello", "int8", "fp32", "A", "B",
                                                        "dense", "float32", [2, 6], [5, 2], {"block": 64}, [[1, 0, 48]]]))


@FUZZ
@given(frames=st.lists(st.binary(max_size=256), min_size=0, max_size=5))
def test_random_bytes(frames):
    check(frames)
    check(frames, LAYOUT)


@st.composite
def schema_headers(draw):
    """Headers with (mostly) the right field names and plausible-or-random values, plus random payload frames."""
    h = {k: draw(field_value) for k in HEADER_KEYS if draw(st.integers(0, 9))}
    if draw(st.booleans()):
        h["tensors"] = [{k: draw(field_value) for k in TENSOR_KEYS if draw(st.integers(0, 9))}
                        for _ in range(draw(st.integers(0, 3)))]
    payload = draw(st.lists(st.binary(max_size=64), max_size=3))
    if draw(st.booleans()):
        h["frames"] = [len(p) for p in payload]
    return [msgpack.packb(h, use_bin_type=True), *payload]


@FUZZ
@given(frames=schema_headers())
def test_random_msgpack_headers(frames):
    check(frames)
    check(frames, LAYOUT)


@st.composite
def mutated(draw):
    frames = list(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "drop", "dup", "field", "tensor_field", "swap"]))
        i = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if op == "flip" and frames and frames[i]:
            b = bytearray(frames[i])
            j = draw(st.integers(0, len(b) - 1))
            b[j] ^= draw(st.integers(1, 255))
            frames[i] = bytes(b)
        elif op == "truncate" and frames:
            frames[i] = frames[i][: draw(st.integers(0, len(frames[i])))]
        elif op == "drop" and frames:
            frames.pop(i)
        elif op == "dup" and frames:
            frames.insert(i, frames[i])
        elif op == "swap" and len(frames) > 1:
            frames[0], frames[-1] = frames[-1], frames[0]
        elif op in ("field", "tensor_field") and frames:
            try:
                h = msgpack.unpackb(frames[0], raw=False)
            except Exception:  # noqa: BLE001 - an earlier mutation broke it; keep the broken bytes
                continue
            if not isinstance(h, dict):
                continue
            if op == "field":
                h[draw(st.sampled_from(sorted(HEADER_KEYS)))] = draw(field_value)
            elif isinstance(h.get("tensors"), list) and h["tensors"] and isinstance(h["tensors"][0], dict):
                t = h["tensors"][draw(st.integers(0, len(h["tensors"]) - 1))]
                t[draw(st.sampled_from(sorted(TENSOR_KEYS)))] = draw(field_value)
            frames[0] = msgpack.packb(h, use_bin_type=True)
    return frames


@FUZZ
@given(frames=mutated())
def test_mutated_valid_messages(frames):
    check(frames)
    check(frames, LAYOUT)


@pytest.mark.parametrize("codec", sorted(VALID))
def test_the_unmutated_messages_pass(codec):
    # Guards the fuzzers: if valid messages were rejected, the mutation test would prove nothing.
    assert check(VALID[codec], LAYOUT) is not None
