"""Adapters <-> wire tensors: encoding an adapter for a message, what a peer keeps between rounds to do so (codec
settings, error-feedback residuals, the stochastic rounding generator), and turning received messages back into
adapters. The message format itself (frames, validation) is `protocol`'s.
"""
from __future__ import annotations

import logging

import torch

from declora.core.codecs import make_codec
from declora.core.drift import B_SUFFIX
from declora.core.error_feedback import ErrorFeedback
from declora.core.factors import Adapter, LoraFactor
from declora.wire.protocol import AdapterLayout, Message, ProtocolError, WireTensor, decode_message

log = logging.getLogger("declora.wire.adapter_messages")


def encode_adapter(adapter: Adapter, codec_name: str = "fp32", *, error_feedback: ErrorFeedback | None = None,
                   block_size: int = 64, stochastic: bool = False, generator: torch.Generator | None = None,
                   dense_codec: str = "fp32") -> list[WireTensor]:
    """The adapter as wire tensors, factors in key order (A before B), then dense tensors.

    Factors go through `codec_name` (with `error_feedback`, whose codec must be that one); dense tensors through
    `dense_codec`: they are small, and a classifier head is where a quantization error shows most. `dense_codec`
    "same" sends them through the factors' codec and error feedback too (--head-codec same): on a small adapter
    their fp32 bytes keep the message from the codec's promised ratio. B factors sent alone as dense tensors
    (`core.drift.B_SUFFIX`, FFA-LoRA) always take the factors' codec and error feedback.
    """
    if error_feedback is not None and error_feedback.codec.name != codec_name:
        raise ValueError(f"error feedback uses codec {error_feedback.codec.name!r}, not {codec_name!r}")
    codec = make_codec(codec_name, block_size, stochastic)
    same = dense_codec == "same"
    dcodec = codec if same else make_codec(dense_codec, block_size, stochastic)
    tensors: list[WireTensor] = []
    for key in sorted(adapter.factors):
        f = adapter.factors[key]
        for role, x in (("A", f.A), ("B", f.B)):
            if error_feedback is not None:
                enc, _ = error_feedback.encode(f"{key}.{role}", x, generator)
            else:
                enc = codec.encode(x, generator)
            tensors.append(WireTensor(key, role, enc, f.r, float(f.alpha), bool(f.rslora)))
    for key in sorted(adapter.dense):
        factor_like = same or key.endswith(B_SUFFIX)  # FFA's B: a factor sent without its A
        if factor_like and error_feedback is not None:
            enc, _ = error_feedback.encode(f"{key}.dense", adapter.dense[key], generator)
        else:
            enc = (codec if factor_like else dcodec).encode(adapter.dense[key], generator)
        tensors.append(WireTensor(key, "dense", enc))
    return tensors


def message_to_adapter(message: Message, layout: AdapterLayout | None = None) -> Adapter:
    """The decoded adapter a message carries (decoding it first if needed)."""
    if layout is not None:
        layout.check(message)
    decode_message(message)
    a: dict[str, torch.Tensor] = {}
    b: dict[str, WireTensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for t in message.tensors:
        if t.role == "A":
            a[t.key] = t.value
        elif t.role == "B":
            b[t.key] = t
        else:
            dense[t.key] = t.value
    factors = {k: LoraFactor(a[k], b[k].value, b[k].alpha, b[k].rslora) for k in sorted(a)}
    return Adapter(factors, dense)


class AdapterSender:
    """One peer's encoder across rounds: `codec` factors (int8/int4 in blocks of `block_size`, rounding
    stochastically if `stochastic`), with error-feedback residuals if `error_feedback`, and a generator seeded with
    `seed` so that a run's stochastic rounding is reproducible and survives a checkpoint. Dense tensors go as
    fp32, or as the factors do if `head_codec` is "same"."""

    def __init__(self, codec: str, block_size: int, stochastic: bool, error_feedback: bool, *, seed: int,
                 head_codec: str = "fp32"):
        self.codec_name, self.block_size, self.stochastic = codec, block_size, stochastic
        self.head_codec = head_codec
        self.error_feedback = ErrorFeedback(make_codec(codec, block_size, stochastic)) if error_feedback else None
        self.generator = torch.Generator().manual_seed(seed)

    def encode(self, adapter: Adapter) -> list[WireTensor]:
        return encode_adapter(adapter, self.codec_name, error_feedback=self.error_feedback,
                              block_size=self.block_size, stochastic=self.stochastic, generator=self.generator,
                              dense_codec=self.head_codec)

    def reset_residuals(self) -> None:
        """After the adapter was replaced by a fresh one (stack mode), old residuals belong to nothing."""
        if self.error_feedback is not None:
            self.error_feedback.reset()

    def state_dict(self) -> dict:
        return {"error_feedback": self.error_feedback.state_dict() if self.error_feedback else None,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.error_feedback is not None and state.get("error_feedback") is not None:
            self.error_feedback.load_state_dict(state["error_feedback"])
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def decode_received(received: dict[int, Message], layout: AdapterLayout | None) -> dict[int, Adapter]:
    """Neighbour id -> decoded adapter; a message that fails here (the transport already validated its frames) is
    dropped with a log line, never mixed."""
    out = {}
    for sender, message in sorted(received.items()):
        try:
            out[sender] = message_to_adapter(message, layout)
        except ProtocolError as e:
            log.warning("dropped round %d from peer %d: %s", message.round, sender, e)
    return out
