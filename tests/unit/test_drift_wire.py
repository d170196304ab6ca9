"""What drift-correction payloads look like on the wire: FFA's B factors (sent without A, as dense tensors) go
through the factors' codec and error feedback, the head keeps its own codec; K-GT's pair passes the layout check."""
from __future__ import annotations

import torch

from declora.core.drift import GradientTracking, b_only
from declora.core.error_feedback import ErrorFeedback
from declora.core.codecs import make_codec
from declora.core.factors import Adapter, LoraFactor
from declora.wire.adapter_messages import encode_adapter, message_to_adapter
from declora.wire.protocol import AdapterLayout, Kind, make_message


def adapter() -> Adapter:
    gen = torch.Generator().manual_seed(0)
    return Adapter({"q": LoraFactor(torch.randn(8, 64, generator=gen), torch.randn(64, 8, generator=gen), 16.0)},
                   {"head.weight": torch.randn(2, 64, generator=gen)})


def test_ffa_b_goes_through_the_factor_codec_and_the_head_does_not():
    tensors = {t.key: t for t in encode_adapter(b_only(adapter()), "int8")}
    assert tensors["q#B"].encoded.codec == "int8"
    assert tensors["head.weight"].encoded.codec == "fp32"
    ef = ErrorFeedback(make_codec("int8", 64, False))
    encode_adapter(b_only(adapter()), "int8", error_feedback=ef)
    assert "q#B.dense" in ef.state_dict()["residuals"]  # its quantization error is fed back like a factor's


def test_kgt_payload_round_trips_through_a_message_and_its_layout():
    rule = GradientTracking(local_steps=4)
    start = adapter()
    correction = rule.begin_round(start)
    correction.mean_gradient = Adapter({k: LoraFactor(0.1 * f.A, 0.1 * f.B, f.alpha) for k, f in start.factors.items()},
                                       start.dense)
    trained = Adapter({k: LoraFactor(f.A * 0.9, f.B * 0.9, f.alpha) for k, f in start.factors.items()}, start.dense)
    payload = rule.payload(trained)
    layout = AdapterLayout.from_adapter(rule.payload_like(start), equal_rank=True)
    msg = make_message(Kind.FACTORS, 1, 0, encode_adapter(payload, "fp32"))
    back = message_to_adapter(msg, layout)
    assert set(back.factors) == {"q", "q#track"}
    torch.testing.assert_close(back.factors["q#track"].A, 0.1 * start.factors["q"].A)
