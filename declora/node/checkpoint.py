"""A peer's checkpoint: everything needed to continue after round t, written atomically once per round.

It holds plain tensors and numbers (loaded with `weights_only=True`, so a checkpoint file cannot run code):
the adapter factors, the dense tensors, the trainer state, the error-feedback residuals and, in stack mode, the
sum of the deltas merged into the base weights so far (the base itself is rebuilt from the checkpoint on disk).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from declora.core.factors import Adapter, LoraFactor


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


# Peers are at most a round apart when a run is killed; keeping two rounds lets all of them resume from the same one.
# More (or all, keep_rounds=0) is for analysis after the run, e.g. the average model per round
# (declora.node.average_model); a stack-mode checkpoint holds a dense delta per module, so that costs disk.
KEEP_ROUNDS = 2


def checkpoint_dir(run_dir: str | Path, peer_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"peer-{peer_id}"


def saved_rounds(run_dir: str | Path, peer_id: int) -> list[int]:
    folder = checkpoint_dir(run_dir, peer_id)
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.pt"))


def save_checkpoint(run_dir: str | Path, peer_id: int, t: int, state: dict, keep_rounds: int = KEEP_ROUNDS) -> Path:
    """Write to a temporary file, fsync, then rename: a crash leaves the old checkpoint or the new, never half.
    Then drop rounds older than the last `keep_rounds` (0 = keep every round)."""
    if keep_rounds < 0:
        raise ValueError(f"keep_rounds must be >= 0 (0 = all), got {keep_rounds}")
    folder = checkpoint_dir(run_dir, peer_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{t}.pt"
    tmp = folder / f".round-{t}.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep_rounds:
        for old in saved_rounds(run_dir, peer_id)[:-keep_rounds]:
            (folder / f"round-{old}.pt").unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: str | Path, peer_id: int, t: int | None = None) -> dict | None:
    """Round t's checkpoint (default: the latest), or None when there is none."""
    rounds = saved_rounds(run_dir, peer_id)
    if not rounds:
        return None
    t = rounds[-1] if t is None else t
    if t not in rounds:
        raise FileNotFoundError(f"peer {peer_id} has no checkpoint of round {t} (it has rounds {rounds})")
    return torch.load(checkpoint_dir(run_dir, peer_id) / f"round-{t}.pt", map_location="cpu", weights_only=True)


def run_peers(run_dir: str | Path) -> list[int]:
    """Peer ids that wrote checkpoints in `run_dir`."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("peer-*") if p.is_dir())


def common_rounds(run_dir: str | Path, peers: Sequence[int] | None = None) -> list[int]:
    """Rounds of which every peer (default: every peer with checkpoints) has a checkpoint; the last is where a
    killed run resumes."""
    peers = run_peers(run_dir) if peers is None else list(peers)
    if not peers:
        return []
    return sorted(set.intersection(*(set(saved_rounds(run_dir, p)) for p in peers)))
