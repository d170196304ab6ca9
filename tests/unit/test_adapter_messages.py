"""--head-codec (declora/wire/adapter_messages.py): the dense tensors through the factor codec, default unchanged to
the byte, and the message sizes at MiniLM-L6 size for int8/int8h/int4/int4h, which is what the codecs promise."""
from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from benchmarks.bench_codecs import minilm_adapter
from declora.core.factors import Adapter, LoraFactor
from declora.wire.adapter_messages import AdapterSender, decode_received, encode_adapter, message_to_adapter
from declora.wire.protocol import Kind, from_frames, make_message, to_frames


def det(shape, k):
    """Exactly representable values (no libm involved), so the bytes are the same on every machine."""
    n = int(torch.tensor(shape).prod())
    ints = (torch.arange(n, dtype=torch.int64) * 7919 + 31 * k) % 201 - 100
    return (ints.float() / 128 * 2.0 ** -(k % 5)).reshape(shape)


def small_adapter():
    f = {f"m{i}": LoraFactor(det((4, 40), i), det((24, 4), i + 5), 8.0) for i in range(3)}
    return Adapter(f, {"classifier.weight": det((2, 40), 9), "classifier.bias": det((2,), 10)})


def wire(sender: AdapterSender, adapter: Adapter, round_=0):
    return make_message(Kind.FACTORS, 1, round_, sender.encode(adapter))


# Frames of two rounds from each sender, recorded before --head-codec existed (main at d35bd9d).
GOLDEN = {
    "fp32": "a8bbde6ecc50b869271937f2f2d492ad39cf0cb3fb22500368c6dcfd57851a54",
    "int8": "26a05ee924fcb9f46abff808d88a93efa759d9de3851bae8eda8166fae4cc130",
    "int4": "e13368d58e39f11951667533aa2e5ffeb15f78ad7f669f824f64fed3e7e1f24e",
}


@pytest.mark.parametrize("codec,ef", [("fp32", False), ("int8", False), ("int4", True)])
def test_default_head_codec_sends_the_same_bytes_as_before(codec, ef):
    for kw in ({}, {"head_codec": "fp32"}):
        sender = AdapterSender(codec, 64, False, ef, seed=3, **kw)
        frames = [f for r in range(2) for f in to_frames(wire(sender, small_adapter(), r))]
        assert hashlib.sha256(b"".join(bytes(f) for f in frames)).hexdigest() == GOLDEN[codec]


@pytest.mark.parametrize("codec", ["int8", "int4", "int8h", "int4h"])
def test_head_codec_same_quantizes_the_head(codec):
    adapter = minilm_adapter()
    plain = wire(AdapterSender(codec, 64, False, False, seed=0), adapter)
    same = wire(AdapterSender(codec, 64, False, False, seed=0, head_codec="same"), adapter)
    dense = {t.key: t for t in same.tensors if t.role == "dense"}
    assert {t.encoded.codec for t in dense.values()} == {codec}
    assert {t.encoded.codec for t in plain.tensors if t.role == "dense"} == {"fp32"}
    head_fp32 = 4 * (2 * 384 + 2)
    assert sum(t.encoded.nbytes for t in dense.values()) < head_fp32 / (3.5 if codec.startswith("int8") else 6)
    assert same.nbytes < plain.nbytes - head_fp32 * 0.6
    # Factors are encoded exactly as before; the head decodes close to what was sent.
    assert [bytes(b) for t in same.tensors if t.role != "dense" for b in t.encoded.buffers] == \
        [bytes(b) for t in plain.tensors if t.role != "dense" for b in t.encoded.buffers]
    got = message_to_adapter(from_frames(to_frames(same)))
    for key, x in adapter.dense.items():
        rel = float((got.dense[key] - x).norm() / x.norm())
        assert 0 < rel < (0.01 if codec.startswith("int8") else 0.15), (key, rel)


@pytest.mark.parametrize("codec", ["int8h", "int4h", "int4"])
def test_head_codec_same_with_error_feedback(codec):
    """The head's residual is carried like the factors': the decoded head summed over rounds follows the sent sum."""
    sender = AdapterSender(codec, 64, False, True, seed=0, head_codec="same")
    key = "base_model.model.classifier.weight"
    sent = got = 0
    for t in range(12):
        adapter = minilm_adapter(seed=t)
        decoded = message_to_adapter(from_frames(to_frames(wire(sender, adapter, t))))
        sent, got = sent + adapter.dense[key].double(), got + decoded.dense[key].double()
        residual = sender.error_feedback.residual(f"{key}.dense")
        assert residual is not None
        torch.testing.assert_close(sent - got, residual.double(), atol=1e-6, rtol=0)
    assert float((sent - got).abs().max()) <= float(adapter.dense[key].abs().max() + residual.abs().max()) / 7
    # The residuals survive a checkpoint, head included.
    other = AdapterSender(codec, 64, False, True, seed=0, head_codec="same")
    other.load_state_dict(sender.state_dict())
    assert torch.equal(other.error_feedback.residual(f"{key}.dense"), residual)


def test_head_codec_fp32_keeps_the_head_out_of_error_feedback():
    sender = AdapterSender("int8", 64, False, True, seed=0)
    wire(sender, minilm_adapter())
    assert not [k for k in sender.error_feedback.state_dict()["residuals"] if k.endswith(".dense")]


def test_a_hostile_int8h_head_is_dropped_with_a_log_line(caplog):
    msg = wire(AdapterSender("int8h", 64, False, False, seed=0, head_codec="same"), small_adapter())
    frames = [bytearray(f) for f in to_frames(msg)]
    head = next(t for t in msg.tensors if t.key == "classifier.bias")
    # The packed frame holds every buffer; find the head's scales (S, then r) in it and make S NaN.
    scales = bytes(head.encoded.buffers[1])
    at = bytes(frames[1]).index(scales)
    frames[1][at:at + 4] = b"\xff\xff\xff\xff"
    received = from_frames([bytes(f) for f in frames], decode=False)
    with caplog.at_level(logging.WARNING, logger="declora.wire.adapter_messages"):
        assert decode_received({1: received}, None) == {}
    assert "dropped round 0 from peer 1" in caplog.text and "classifier.bias" in caplog.text


# --------------------------------------------------------------------------------------------- MiniLM sizes

MINILM_VALUES = 12 * 2 * 8 * 384 + 2 * 384 + 2


def minilm_bytes(codec, block, ef, head):
    msg = wire(AdapterSender(codec, block, False, ef, seed=0, head_codec=head), minilm_adapter())
    assert msg.nbytes == sum(len(bytes(f)) for f in to_frames(msg))
    return msg.nbytes, sum(t.encoded.nbytes for t in msg.tensors)


def expected_payload(codec, block, head):
    """Codes, plus 4 bytes a block (int8/int4) or 4 a tensor + 2 a block (int8h/int4h); an fp32 head as is."""
    tensors = [(8 * 384, 24), (2 * 384, 1), (2, 1)]  # (values, how many) for factors, head weight, head bias
    total = 0
    for i, (n, count) in enumerate(tensors):
        if i and head == "fp32":
            total += 4 * n * count
            continue
        blocks = -(-n // block)
        codes = n if codec.startswith("int8") else (n + 1) // 2
        total += count * (codes + (4 + 2 * blocks if codec.endswith("h") else 4 * blocks))
    return total


@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("head", ["fp32", "same"])
def test_minilm_message_bytes(block, head):
    fp32, fp32_payload = minilm_bytes("fp32", block, False, "fp32")
    assert fp32_payload == 4 * MINILM_VALUES
    ratio = {}
    for codec, ef in (("int8", False), ("int8h", False), ("int4", True), ("int4h", True)):
        nbytes, payload = minilm_bytes(codec, block, ef, head)
        assert payload == expected_payload(codec, block, head)
        ratio[codec] = fp32 / nbytes
    # The 2-byte scales and the quantized head are what closes the gap to the promise (benchmarks/README.md).
    assert ratio["int8h"] > ratio["int8"] and ratio["int4h"] > ratio["int4"]
    if head == "same":
        assert ratio["int4h"] >= 6.8  # the int4 + error feedback goal of issue 15, met at block 64 already
        assert ratio["int8h"] >= (3.69 if block == 64 else 3.75)  # the 3.9x goal is not: see benchmarks/README.md
    else:
        assert ratio["int4h"] >= (6.42 if block == 64 else 6.58) and ratio["int8h"] >= 3.60
