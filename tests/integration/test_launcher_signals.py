"""Stopping `declora simulate` any way stops every peer within seconds and leaves no orphan: SIGTERM, SIGHUP and
Ctrl-C (SIGINT) of the launcher, also during start-up, and SIGKILL (which the launcher cannot catch: the peers get
a parent-death signal)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_simulate import REPO, classification_args

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def processes_of(run_dir: Path) -> list[int]:
    """Live processes whose command line names this run's folder (the peers get DIR/config.json)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")), "")
        except OSError:
            continue
        if str(run_dir) in cmd and "declora.node.peer" in cmd and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def stopped_within(launcher: subprocess.Popen, out: Path, timeout: float) -> None:
    """Wait for the launcher to exit; if it does not, fail with where it is stuck: its Python stacks (it dumps them
    on SIGUSR1, node.stack_dump), its output, and the state of each peer process."""
    try:
        launcher.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    launcher.send_signal(signal.SIGUSR1)
    time.sleep(2)
    launcher.kill()
    text = launcher.communicate(timeout=10)[0]
    peers = {pid: Path(f"/proc/{pid}/status").read_text().splitlines()[2] for pid in processes_of(out)}
    logs = {p.name: p.read_text(errors="replace")[-2000:] for p in sorted((out / "logs").glob("*.log"))}
    pytest.fail(f"the launcher did not exit within {timeout:.0f} s of the signal\n--- its output and stacks:\n{text}"
                f"\n--- peer processes: {peers}\n--- peer logs: {logs}")


@pytest.mark.parametrize("sig,when", [(signal.SIGTERM, "running"), (signal.SIGHUP, "running"),
                                      (signal.SIGKILL, "running"), (signal.SIGINT, "starting")])
def test_stopping_the_launcher_stops_every_peer(tmp_path, sig, when):
    out = tmp_path / "run"
    args = [*classification_args(tmp_path), "--peers", "3", "--rounds", "500"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads",
                                 "1", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=REPO)
    try:
        if when == "starting":  # as soon as the first peer process exists, before any has finished a round
            assert wait_for(lambda: processes_of(out), 60), "no peer started"
        else:
            assert wait_for(lambda: (out / "metrics" / "peer-0.jsonl").exists(), 120), "no round finished"
            assert len(processes_of(out)) == 3
        launcher.send_signal(sig)
        stopped_within(launcher, out, 30)
        assert wait_for(lambda: not processes_of(out), 15), f"peers left running: {processes_of(out)}"
    finally:
        launcher.kill()
        for pid in processes_of(out):
            os.kill(pid, signal.SIGKILL)
    if sig != signal.SIGKILL:
        text = launcher.stdout.read()
        assert "stopping peers" in text, text
        assert launcher.returncode == (130 if sig == signal.SIGINT else 128 + sig)
