"""Error feedback for lossy codecs: the sender carries what quantization lost into its next message."""
from __future__ import annotations

import torch

from declora.core.codecs import Codec, Encoded, flat_float32


class ErrorFeedback:
    """CHOCO-SGD style: the sender keeps what quantization lost (x - Q(x)) per key and adds it to the next message.

    Then the sum of what receivers decoded over rounds equals the sum of the inputs minus the last residual, so the
    gap stays within one quantization step instead of growing with the number of rounds. A key whose shape changes
    (a rank change, say) starts again with no residual. Not thread-safe: one instance per sending peer.
    """

    def __init__(self, codec: Codec):
        self.codec = codec
        self._residual: dict[str, torch.Tensor] = {}

    def encode(
        self, key: str, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[Encoded, torch.Tensor]:
        """Encode x plus the residual of `key`; return (message, the float32 CPU value the receiver will decode)."""
        target = flat_float32(x, self.codec.name).reshape(x.shape)
        residual = self._residual.get(key)
        if residual is not None and residual.shape == target.shape:
            target = target + residual
        enc = self.codec.encode(target, generator)  # raises on NaN/Inf before any state changes
        decoded = self.codec.decode(enc.shape, enc.meta, enc.buffers)
        self._residual[key] = target - decoded
        return enc, decoded

    def residual(self, key: str) -> torch.Tensor | None:
        return self._residual.get(key)

    def reset(self, key: str | None = None) -> None:
        """Forget every residual, or only that of `key`."""
        if key is None:
            self._residual.clear()
        else:
            self._residual.pop(key, None)

    def state_dict(self) -> dict:
        return {"codec": self.codec.name, "residuals": {k: v.clone() for k, v in self._residual.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore residuals from `state_dict()` output (e.g. a peer checkpoint); checks them first."""
        residuals = state.get("residuals") if isinstance(state, dict) else None
        if not isinstance(residuals, dict):
            raise ValueError("error-feedback state must be a dict with a 'residuals' dict")
        loaded = {}
        for key, value in residuals.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(f"error-feedback residual {key!r} must be a floating-point tensor under a str key")
            value = value.detach().to(device="cpu", dtype=torch.float32).clone()
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"error-feedback residual {key!r} has NaN or Inf")
            loaded[key] = value
        self._residual = loaded
