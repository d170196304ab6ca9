"""What a peer keeps between rounds to send its adapter (codec settings, error-feedback residuals, the stochastic
rounding generator) and how it turns received messages back into adapters.

A thin layer over `protocol.encode_adapter` / `protocol.message_to_adapter`, so the round loop stays one line each.
"""
from __future__ import annotations

import logging

import torch

from declora.core.codecs import ErrorFeedback, make_codec
from declora.config import RunConfig
from declora.core.factors import Adapter
from declora.wire.protocol import AdapterLayout, Message, ProtocolError, WireTensor, encode_adapter, message_to_adapter

log = logging.getLogger("declora.wire.adapter_messages")


class AdapterSender:
    def __init__(self, cfg: RunConfig, seed: int):
        self.codec_name, self.block_size, self.stochastic = cfg.codec, cfg.block_size, cfg.stochastic_rounding
        codec = make_codec(cfg.codec, cfg.block_size, cfg.stochastic_rounding)
        self.error_feedback = ErrorFeedback(codec) if cfg.error_feedback else None
        self.generator = torch.Generator().manual_seed(seed)

    def encode(self, adapter: Adapter) -> list[WireTensor]:
        tensors, _ = encode_adapter(adapter, self.codec_name, error_feedback=self.error_feedback,
                                    block_size=self.block_size, stochastic=self.stochastic, generator=self.generator,
                                    return_decoded=False)
        return tensors

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
