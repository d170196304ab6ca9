"""Checkpoints survive what disks do: a cut-off latest file falls back to the round before, foreign files in the
folder are ignored, and a full disk (a real 64 KiB tmpfs, where root may mount one) gives one clear error while
the previous checkpoint stays loadable and no temporary file is left behind."""
from __future__ import annotations

import subprocess

import pytest
import torch

from declora.node.checkpoint import (CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint,
                                     saved_rounds)


def state(t: int, size: int = 8) -> dict:
    return {"round": t, "adapter": torch.full((size,), float(t))}


def test_a_cut_off_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    for t in range(3):
        save_checkpoint(tmp_path, 0, t, state(t), keep_rounds=0)
    latest = checkpoint_dir(tmp_path, 0) / "round-2.pt"
    latest.write_bytes(latest.read_bytes()[:40])  # a crash mid-copy, a truncated transfer
    got = load_checkpoint(tmp_path, 0)
    assert got["round"] == 1 and torch.equal(got["adapter"], torch.full((8,), 1.0))
    assert "round 2 does not load" in caplog.text


def test_foreign_files_are_ignored_by_resume_and_by_pruning(tmp_path):
    folder = checkpoint_dir(tmp_path, 0)
    folder.mkdir(parents=True)
    for name in ("round-old.pt", "round-3.pt.bak", "notes.txt", "round-.pt"):
        (folder / name).write_text("not a checkpoint")
    for t in range(4):
        save_checkpoint(tmp_path, 0, t, state(t), keep_rounds=2)
    assert saved_rounds(tmp_path, 0) == [2, 3]
    assert load_checkpoint(tmp_path, 0)["round"] == 3
    assert (folder / "round-old.pt").exists()  # not ours: left alone


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_gives_one_clear_error_and_keeps_the_previous_checkpoint(tiny_disk):
    save_checkpoint(tiny_disk, 0, 0, state(0))
    with pytest.raises(CheckpointError, match="no space left on the device.*previous round is intact"):
        save_checkpoint(tiny_disk, 0, 1, state(1, size=1 << 16))  # 256 KiB into 64 KiB
    assert load_checkpoint(tiny_disk, 0)["round"] == 0
    assert [p.name for p in checkpoint_dir(tiny_disk, 0).iterdir()] == ["round-0.pt"]  # no temp file left


def test_a_new_checkpoint_is_never_pruned_in_favour_of_stale_later_rounds(tmp_path):
    for t in (48, 49):  # an earlier life of the run got this far
        save_checkpoint(tmp_path, 0, t, state(t))
    save_checkpoint(tmp_path, 0, 0, state(0))  # this life starts over
    assert saved_rounds(tmp_path, 0) == [0]
    assert load_checkpoint(tmp_path, 0)["round"] == 0
