"""A peer's checkpoint: everything needed to continue after round t, written atomically once per round.

It holds plain tensors and numbers (loaded with `weights_only=True`, so a checkpoint file cannot run code):
the adapter factors, the dense tensors, the trainer state, the error-feedback residuals and, in stack mode, the
sum of the deltas merged into the base weights so far (the base itself is rebuilt from the checkpoint on disk).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .factors import Adapter, LoraFactor


def adapter_to_state(adapter: Adapter) -> dict:
    return {
        "factors": {k: {"A": f.A, "B": f.B, "alpha": float(f.alpha), "rslora": bool(f.rslora)}
                    for k, f in adapter.factors.items()},
        "dense": dict(adapter.dense),
    }


def adapter_from_state(state: dict) -> Adapter:
    return Adapter(
        {k: LoraFactor(v["A"], v["B"], v["alpha"], v["rslora"]) for k, v in state["factors"].items()},
        dict(state["dense"]),
    )


def checkpoint_path(run_dir: str | Path, peer_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"peer-{peer_id}.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, fsync, then rename: a crash leaves the old checkpoint or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
