"""TensorBoard event files (--report-to tensorboard): DIR/tensorboard/peer-<i>, written by each peer as its rounds
end, and DIR/tensorboard/run, the per-round means over peers, written by the launcher once the run is over.

A step is a round counted from 1, as the progress lines count. The writer is torch's SummaryWriter, which needs the
optional tensorboard package (`pip install -e .[tensorboard]`); without --report-to nothing here imports it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from declora.config import ConfigError, RunConfig
from declora.node.metrics import COUNT_KEYS

INSTALL_HINT = "--report-to tensorboard needs the tensorboard package: pip install -e .[tensorboard]"

# Record key -> TensorBoard tag. Eval metrics are added as eval/<name> from whatever the records carry.
ROUND_SCALARS = {"train_loss": "train/loss", "bytes_sent": "wire/bytes_sent", "bytes_received": "wire/bytes_received",
                 "neighbours_heard": "wire/neighbours_heard", "distance_to_neighbours": "consensus/distance",
                 "round_seconds": "time/round_seconds"}


def report_targets(cfg: RunConfig) -> list[str]:
    return [s.strip() for s in cfg.report_to.split(",") if s.strip()]


def check_tensorboard(cfg: RunConfig) -> None:
    """Before a run starts: --report-to names only what we support, and tensorboard is importable (not mid-run)."""
    targets = report_targets(cfg)
    unknown = [t for t in targets if t != "tensorboard"]
    if unknown:
        raise ConfigError(f"--report-to supports only tensorboard, got {', '.join(unknown)}")
    if targets:
        _summary_writer_class()


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this when the tensorboard package is missing
        raise ConfigError(INSTALL_HINT) from None
    return SummaryWriter


def _scalars(record: dict, suffix: str = "") -> dict[str, float]:
    """TensorBoard tag -> value for one record (a peer's round) or one row of the round table (suffix `_mean`)."""
    out = {}
    for key, tag in ROUND_SCALARS.items():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    for key, value in record.items():
        if key.startswith("eval_") and key.endswith(suffix) and isinstance(value, (int, float)) \
                and not isinstance(value, bool) and not key.startswith(COUNT_KEYS):
            out["eval/" + key[len("eval_"): len(key) - len(suffix)]] = float(value)
    return out


class PeerBoard:
    """One peer's event file; `write` takes the round's metrics record as the peer writes it to its JSONL file."""

    def __init__(self, folder: Path, first_round: int = 0):
        # purge_step: on resume, events of rounds that are run again are dropped instead of drawn twice.
        self.writer = _summary_writer_class()(str(folder), purge_step=first_round + 1 if first_round else None)

    def write(self, record: dict) -> None:
        step = record["round"] + 1
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a peer killed mid-run leaves its rounds readable

    def close(self) -> None:
        self.writer.close()


class NoBoard:
    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def open_peer_board(cfg: RunConfig, peer_id: int, first_round: int = 0) -> PeerBoard | NoBoard:
    if "tensorboard" not in report_targets(cfg):
        return NoBoard()
    return PeerBoard(Path(cfg.out) / "tensorboard" / f"peer-{peer_id}", first_round)


def write_run_board(cfg: RunConfig, rows: list[dict]) -> Path | None:
    """The run's per-round means (round_table rows), rewritten whole at the end of every launch (a resumed run's
    table covers all its rounds)."""
    if "tensorboard" not in report_targets(cfg):
        return None
    folder = Path(cfg.out) / "tensorboard" / "run"
    shutil.rmtree(folder, ignore_errors=True)
    writer = _summary_writer_class()(str(folder))
    for row in rows:
        for tag, value in _scalars(row, suffix="_mean").items():
            writer.add_scalar(tag, value, row["round"] + 1)
        writer.add_scalar("peers_reporting", row["peers_reporting"], row["round"] + 1)
    writer.close()
    return folder
