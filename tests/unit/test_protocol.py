"""declora.wire.protocol: frames <-> messages for every kind and codec, and every validation error by name."""
import math

import msgpack
import pytest
import torch

from declora.core.codecs import CODEC_NAMES, make_codec
from declora.core.error_feedback import ErrorFeedback
from declora.core.factors import Adapter, LoraFactor
from declora.wire.adapter_messages import encode_adapter, message_to_adapter
from declora.wire.protocol import (
    PROTOCOL_VERSION,
    TENSOR_KINDS,
    AdapterLayout,
    Kind,
    Limits,
    Message,
    ModuleLayout,
    ProtocolError,
    WireTensor,
    decode_message,
    from_frames,
    make_message,
    to_frames,
)


def adapter(seed=0, r=4, n_modules=3, din=32, dout=24, alpha=8.0, head=True):
    g = torch.Generator().manual_seed(seed)
    factors = {f"layer.{i}.q": LoraFactor(torch.randn(r, din, generator=g), torch.randn(dout, r, generator=g), alpha)
               for i in range(n_modules)}
    dense = {"head.weight": torch.randn(2, dout, generator=g), "head.bias": torch.randn(2, generator=g)} if head else {}
    return Adapter(factors, dense)


def frames_of(msg):
    """As a socket would deliver them: independent bytes."""
    return [bytes(memoryview(f).cast("B")) for f in to_frames(msg)]


def valid(kind=Kind.FACTORS, codec="fp32", **kw):
    return frames_of(make_message(kind, 3, 7, encode_adapter(adapter(**kw), codec)))


def decoded_by_receiver(tensors):
    """What a receiver makes of these tensors: frames, validation, decoding."""
    return message_to_adapter(from_frames(frames_of(make_message(Kind.FACTORS, 0, 0, tensors))))


def decoded_by_sender(tensors):
    """The codec's decoding of the sender's own buffers, no frames involved: the reference for what the wire does."""
    return message_to_adapter(Message(Kind.FACTORS, 0, 0, tensors=list(tensors)))


def header(frames):
    return msgpack.unpackb(frames[0], raw=False)


def with_header(frames, edit):
    h = header(frames)
    edit(h)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def reason_of(frames, **kw):
    with pytest.raises(ProtocolError) as e:
        from_frames(frames, **kw)
    return e.value.reason


def assert_same_adapter(a, b, atol=0.0):
    assert a.keys() == b.keys() and set(a.dense) == set(b.dense)
    for k in a.factors:
        fa, fb = a.factors[k], b.factors[k]
        assert (fa.alpha, fa.rslora) == (fb.alpha, fb.rslora)
        torch.testing.assert_close(fa.A, fb.A, atol=atol, rtol=0)
        torch.testing.assert_close(fa.B, fb.B, atol=atol, rtol=0)
    for k in a.dense:
        torch.testing.assert_close(a.dense[k], b.dense[k], atol=atol, rtol=0)


# ---- round trips ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("kind", sorted(TENSOR_KINDS, key=lambda k: k.value))
def test_tensor_kinds_round_trip_with_every_codec(kind, codec):
    a = adapter()
    tensors = encode_adapter(a, codec)
    msg = make_message(kind, 5, 11, tensors, body={"samples": 123})
    layout = AdapterLayout.from_adapter(a, equal_rank=True)
    got = from_frames(frames_of(msg), layout=layout)
    assert (got.kind, got.sender, got.round, got.body, got.version) == (kind, 5, 11, {"samples": 123}, PROTOCOL_VERSION)
    assert got.nbytes == msg.nbytes == sum(len(f) for f in frames_of(msg))
    # The wire changes nothing: the receiver decodes exactly what the codec makes of the sender's buffers.
    assert_same_adapter(message_to_adapter(got, layout), decoded_by_sender(tensors))
    if codec == "fp32":
        assert_same_adapter(message_to_adapter(got), a)


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.PING, Kind.PONG, Kind.BYE])
def test_control_kinds_round_trip(kind):
    body = {"endpoint": "tcp://127.0.0.1:5555", "layout": AdapterLayout.from_adapter(adapter()).to_body()}
    msg = make_message(kind, 0, 2**40, body=body if kind == Kind.HELLO else None)
    got = from_frames(frames_of(msg))
    assert (got.kind, got.sender, got.round, got.tensors) == (kind, 0, 2**40, [])
    assert len(frames_of(msg)) == 1
    if kind == Kind.HELLO:
        assert AdapterLayout.from_body(got.body["layout"]) == AdapterLayout.from_adapter(adapter())


def test_control_kinds_refuse_tensors():
    tensors = encode_adapter(adapter(), "fp32")
    with pytest.raises(ValueError):
        make_message(Kind.PING, 0, 0, tensors)


def test_small_buffers_are_packed_into_one_frame_and_big_ones_travel_alone():
    big = Adapter({"m": LoraFactor(torch.randn(16, 4096), torch.randn(4096, 16), 32.0)}, {"b": torch.randn(3)})
    tensors = encode_adapter(big, "fp32")  # factors 256 KiB each: own frames; the dense bias: packed
    frames = to_frames(make_message(Kind.FACTORS, 0, 0, tensors))
    assert len(frames) == 1 + 1 + 2
    assert [memoryview(f).nbytes for f in frames[2:]] == [262144, 262144]
    # Zero copy: the big frames are the codec's own buffers, not copies.
    assert frames[2] is tensors[0].encoded.buffers[0]
    unpacked = to_frames(make_message(Kind.FACTORS, 0, 0, tensors, pack_below=0))
    assert len(unpacked) == 1 + 3
    int8 = to_frames(make_message(Kind.FACTORS, 0, 0, encode_adapter(big, "int8")))
    assert len(int8) == 2  # 64 KiB codes and 4 KiB scales all share one frame (measured to pay)
    for fr in (frames, unpacked):
        assert_same_adapter(message_to_adapter(from_frames(fr)), big)


def test_packed_buffers_are_aligned():
    tensors = encode_adapter(adapter(din=7, dout=5, r=3), "int4")  # odd sizes everywhere
    h = header(frames_of(make_message(Kind.FACTORS, 0, 0, tensors)))
    offsets = [off for t in h["tensors"] for fi, off, n in t["bufs"]]
    assert offsets and all(off % 16 == 0 for off in offsets)


def test_error_feedback_carries_what_quantization_lost_into_the_next_message():
    a = adapter()
    ef = ErrorFeedback(make_codec("int8"))
    first = decoded_by_receiver(encode_adapter(a, "int8", error_feedback=ef))
    second = decoded_by_receiver(encode_adapter(a, "int8", error_feedback=ef))
    residual = ef.residual("layer.0.q.A")
    assert residual is not None
    assert not torch.equal(first.factors["layer.0.q"].A, second.factors["layer.0.q"].A)  # the residual went in
    # What receivers decoded over both rounds is what was sent, less what the sender still holds back.
    torch.testing.assert_close(first.factors["layer.0.q"].A + second.factors["layer.0.q"].A,
                               2 * a.factors["layer.0.q"].A - residual, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="error feedback uses codec"):
        encode_adapter(a, "int4", error_feedback=ef)


def test_decode_can_be_deferred():
    msg = from_frames(valid(codec="int8"), decode=False)
    assert all(t.value is None for t in msg.tensors)
    decode_message(msg)
    assert all(t.value is not None and t.value.dtype == torch.float32 for t in msg.tensors)


def test_heterogeneous_ranks_pass_a_range_layout_and_fail_an_equal_rank_one():
    mine = adapter(r=4)
    theirs = frames_of(make_message(Kind.FACTORS, 1, 0, encode_adapter(adapter(r=8), "fp32")))
    from_frames(theirs, layout=AdapterLayout.from_adapter(mine, max_rank=16))
    assert reason_of(theirs, layout=AdapterLayout.from_adapter(mine, max_rank=6)) == "rank"
    assert reason_of(theirs, layout=AdapterLayout.from_adapter(mine, equal_rank=True)) == "rank"


def test_rslora_and_alpha_travel_and_are_checked():
    a = Adapter({"m": LoraFactor(torch.randn(2, 4), torch.randn(3, 2), 5.0, rslora=True)})
    got = decoded_by_receiver(encode_adapter(a))
    assert got.factors["m"].rslora and got.factors["m"].alpha == 5.0
    other = Adapter({"m": LoraFactor(torch.randn(2, 4), torch.randn(3, 2), 6.0, rslora=True)})
    frames = frames_of(make_message(Kind.FACTORS, 0, 0, encode_adapter(other)))
    assert reason_of(frames, layout=AdapterLayout.from_adapter(a)) == "alpha"
    from_frames(frames, layout=AdapterLayout.from_adapter(a, same_alpha=False))


# ---- every validation error ---------------------------------------------------------------------------------------
def _nan_fp32(frames):
    """Put a NaN into the first fp32 value of the first tensor."""
    h = header(frames)
    fi, off, _ = h["tensors"][0]["bufs"][0]
    frame = bytearray(frames[fi])
    frame[off: off + 4] = bytes.fromhex("0000c07f")  # little-endian float32 NaN
    return [*frames[:fi], bytes(frame), *frames[fi + 1:]]


def _nan_int8_scale(frames):
    h = header(frames)
    fi, off, _ = h["tensors"][0]["bufs"][1]  # the scales
    frame = bytearray(frames[fi])
    frame[off: off + 4] = bytes.fromhex("0000807f")  # +Inf
    return [*frames[:fi], bytes(frame), *frames[fi + 1:]]


def _set(path, value):
    def edit(h):
        node = h
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return edit


LAYOUT = AdapterLayout.from_adapter(adapter(), equal_rank=True)

CASES = {
    "empty": ([], "frames"),
    "not msgpack": ([b"\xc1\xc1\xc1"], "bad_header"),
    "header is a list": ([msgpack.packb([1, 2, 3])], "bad_header"),
    "header has a bytes key": ([msgpack.packb({b"v": 1}, use_bin_type=True)], "bad_header"),
    "missing field": (with_header(valid(), lambda h: h.pop("round")), "bad_header"),
    "extra field": (with_header(valid(), _set(["pickle"], 1)), "bad_header"),
    "wrong version": (with_header(valid(), _set(["v"], PROTOCOL_VERSION + 1)), "version"),
    "version as string": (with_header(valid(), _set(["v"], "1")), "version"),
    "unknown kind": (with_header(valid(), _set(["kind"], "exec")), "kind"),
    "negative sender": (with_header(valid(), _set(["sender"], -1)), "sender"),
    "bool round": (with_header(valid(), _set(["round"], True)), "round"),
    "float round": (with_header(valid(), _set(["round"], 1.5)), "round"),
    "body not a map": (with_header(valid(), _set(["body"], [1])), "body"),
    "tensors in a ping": (with_header(valid(), _set(["kind"], "ping")), "kind"),
    "truncated multipart": (valid()[:-1], "frames"),
    "extra frame": ([*valid(), b"x" * 10], "frames"),
    "frame size lie": (with_header(valid(), lambda h: h["frames"].__setitem__(0, h["frames"][0] + 4)), "frames"),
    "unknown codec": (with_header(valid(), _set(["tensors", 0, "codec"], "pickle")), "codec"),
    "wrong dtype": (with_header(valid(), _set(["tensors", 0, "dtype"], "float64")), "dtype"),
    "unknown role": (with_header(valid(), _set(["tensors", 0, "role"], "C")), "role"),
    "empty key": (with_header(valid(), _set(["tensors", 0, "key"], "")), "key"),
    "3-D factor": (with_header(valid(), _set(["tensors", 0, "shape"], [4, 32, 1])), "shape"),
    "negative dim": (with_header(valid(), _set(["tensors", 0, "shape"], [-4, 32])), "shape"),
    "rank vs shape": (with_header(valid(), _set(["tensors", 0, "r"], 5)), "shape"),
    "rank zero": (with_header(valid(), lambda h: [t.__setitem__("r", 0) for t in h["tensors"][:2]]), "rank"),
    "A and B disagree": (with_header(valid(), _set(["tensors", 0, "alpha"], 9.0)), "rank"),
    "NaN alpha": (with_header(valid(), _set(["tensors", 0, "alpha"], math.nan)), "alpha"),
    "negative alpha": (with_header(valid(), lambda h: [t.__setitem__("alpha", -1.0) for t in h["tensors"][:2]]),
                       "alpha"),
    "missing B": (with_header(valid(), lambda h: h["tensors"].pop(1)), "layout"),
    "duplicate tensor": (with_header(valid(), lambda h: h["tensors"].insert(0, h["tensors"][0])), "duplicate"),
    "buffer past frame": (with_header(valid(), _set(["tensors", 0, "bufs", 0, 1], 10**6)), "frames"),
    "buffer in header frame": (with_header(valid(), _set(["tensors", 0, "bufs", 0, 0], 0)), "frames"),
    "buffer too short": (with_header(valid(), _set(["tensors", 0, "bufs", 0, 2], 4)), "payload"),
    "two buffers for fp32": (with_header(valid(), lambda h: h["tensors"][0]["bufs"].append([1, 0, 4])), "payload"),
    "bad int8 block": (with_header(valid(codec="int8"), _set(["tensors", 0, "meta"], {"block": 0})), "payload"),
    "NaN payload": (_nan_fp32(valid()), "nonfinite"),
    "Inf int8 scale": (_nan_int8_scale(valid(codec="int8")), "nonfinite"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_message_is_rejected_with_its_reason(name):
    frames, reason = CASES[name]
    assert reason_of(frames) == reason


@pytest.mark.parametrize("name,edit,reason", [
    ("wrong in_features", lambda a: Adapter({k: LoraFactor(torch.randn(f.r, 31), f.B, f.alpha) for k, f in a.factors.items()},
                                            a.dense), "shape"),
    ("unknown module", lambda a: Adapter({**a.factors, "extra": a.factors["layer.0.q"]}, a.dense), "layout"),
    ("missing module", lambda a: Adapter({k: f for k, f in a.factors.items() if k != "layer.1.q"}, a.dense), "layout"),
    ("missing dense", lambda a: Adapter(a.factors, {"head.weight": a.dense["head.weight"]}), "layout"),
    ("dense shape", lambda a: Adapter(a.factors, {**a.dense, "head.bias": torch.randn(3)}), "shape"),
])
def test_layout_violations(name, edit, reason):
    frames = frames_of(make_message(Kind.FACTORS, 1, 0, encode_adapter(edit(adapter()), "fp32")))
    from_frames(frames)  # well-formed on its own...
    assert reason_of(frames, layout=LAYOUT) == reason  # ...but not what this receiver trains


def test_limits():
    frames = valid()
    total = sum(len(f) for f in frames)
    assert reason_of(frames, limits=Limits(max_message_bytes=total - 1)) == "oversize"
    from_frames(frames, limits=Limits(max_message_bytes=total))
    assert reason_of(frames, limits=Limits(max_header_bytes=len(frames[0]) - 1)) == "oversize"
    assert reason_of(frames, limits=Limits(max_tensors=7)) == "limits"  # 3 modules x 2 + 2 dense = 8
    assert reason_of(frames, limits=Limits(max_rank=3)) == "rank"
    assert reason_of(frames, limits=Limits(max_peer_id=2)) == "sender"
    assert reason_of(frames, limits=Limits(max_round=6)) == "round"


def test_errors_say_what_is_wrong():
    with pytest.raises(ProtocolError, match=r"protocol version 2, expected 1"):
        from_frames(with_header(valid(), _set(["v"], 2)))
    with pytest.raises(ProtocolError, match=r"layer.0.q.*shape \[4, 31\], expected \[4, 32\]"):
        bad = Adapter({k: LoraFactor(torch.randn(4, 31), f.B, f.alpha) for k, f in adapter().factors.items()},
                      adapter().dense)
        from_frames(frames_of(make_message(Kind.FACTORS, 1, 0, encode_adapter(bad))), layout=LAYOUT)


def test_layout_from_body_rejects_garbage():
    with pytest.raises(ProtocolError):
        AdapterLayout.from_body({"modules": {"m": [1, 2]}, "dense": {}})
    with pytest.raises(ProtocolError):
        AdapterLayout.from_body([1, 2, 3])
    layout = AdapterLayout({"m": ModuleLayout(4, 5, 1, 8, 16.0, False)}, {"h": (2, 3)})
    assert AdapterLayout.from_body(layout.to_body()) == layout


def test_wire_tensor_round_trip_keeps_dense_role():
    a = adapter()
    tensors = encode_adapter(a, "int8")
    roles = [t.role for t in tensors]
    assert roles.count("dense") == 2 and roles.count("A") == roles.count("B") == 3
    # Dense tensors go as fp32 by default, whatever the factor codec: they are small and precision-sensitive.
    assert all(t.encoded.codec == "fp32" for t in tensors if t.role == "dense")
    assert isinstance(tensors[0], WireTensor)
