"""A peer's checkpoint: everything needed to continue after round t, written atomically once per round.

It holds plain tensors and numbers (loaded with `weights_only=True`, so a checkpoint file cannot run code):
the adapter factors, the dense tensors, the trainer state, the error-feedback residuals and, in stack mode, the
sum of the deltas merged into the base weights so far (the base itself is rebuilt from the checkpoint on disk).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from declora.core.factors import Adapter, LoraFactor

log = logging.getLogger("declora.node.checkpoint")
_ROUND_FILE = re.compile(r"round-(\d+)\.pt")  # anything else in the folder is not ours and is left alone


class CheckpointError(OSError):
    """A checkpoint could not be written (full disk, no permission); the previous one is intact."""


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
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _ROUND_FILE.fullmatch(p.name)))


def save_checkpoint(run_dir: str | Path, peer_id: int, t: int, state: dict, keep_rounds: int = KEEP_ROUNDS) -> Path:
    """Write to a temporary file, fsync, then rename: a crash leaves the old checkpoint or the new, never half.
    Then drop rounds older than the last `keep_rounds` (0 = keep every round)."""
    if keep_rounds < 0:
        raise ValueError(f"keep_rounds must be >= 0 (0 = all), got {keep_rounds}")
    folder = checkpoint_dir(run_dir, peer_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{t}.pt"
    tmp = folder / f".round-{t}.pt.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)  # the rename itself survives a power cut
    except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError ("enforce fail ...")
        tmp.unlink(missing_ok=True)
        reason = "no space left on the device" if _disk_full(e, folder) else str(e).splitlines()[0]
        raise CheckpointError(f"cannot write the checkpoint of round {t} to {folder}: {reason}; the checkpoint of "
                              f"the previous round is intact: free space (or fix the folder) and resume with "
                              f"--resume") from None
    rounds = saved_rounds(run_dir, peer_id)
    stale = [r for r in rounds if r > t]  # from an earlier life of this run that got further: superseded by this one
    if stale:
        log.warning("peer %d: removing checkpoints of rounds %s, left by an earlier run that this one replaces",
                    peer_id, stale)
    older = [r for r in rounds if r <= t]
    for old in stale + (older[:-keep_rounds] if keep_rounds else []):
        (folder / f"round-{old}.pt").unlink(missing_ok=True)
    return path


def _disk_full(error: Exception, folder: Path) -> bool:
    """torch reports ENOSPC as a RuntimeError about stream positions, so also look at the disk itself."""
    if getattr(error, "errno", None) == errno.ENOSPC or "space" in str(error).lower():
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(run_dir: str | Path, peer_id: int, t: int) -> dict:
    return torch.load(checkpoint_dir(run_dir, peer_id) / f"round-{t}.pt", map_location="cpu", weights_only=True)


def load_checkpoint(run_dir: str | Path, peer_id: int, t: int | None = None) -> dict | None:
    """Round t's checkpoint, or None when there is none. Without t: the latest one that loads; a cut-off or
    corrupt file is skipped with a warning (an earlier round is still a valid place to resume from)."""
    rounds = saved_rounds(run_dir, peer_id)
    if not rounds:
        return None
    if t is not None:
        if t not in rounds:
            raise FileNotFoundError(f"peer {peer_id} has no checkpoint of round {t} (it has rounds {rounds})")
        return _load(run_dir, peer_id, t)
    for r in reversed(rounds):
        try:
            return _load(run_dir, peer_id, r)
        except Exception as e:  # noqa: BLE001 - any unreadable file: fall back to the round before
            log.warning("peer %d: the checkpoint of round %d does not load (%s); trying an earlier one", peer_id, r,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
    return None


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
