"""`declora simulate` end to end: real peer processes over loopback ZeroMQ, tiny models built from configs, every
aggregation mode, the server baseline, the centralized reference, heterogeneous ranks, causal LM, resume."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOLLY = REPO / "tests" / "fixtures" / "dolly-tiny"


def sst2_slice(tmp_path: Path, n_train: int = 400, n_dev: int = 64) -> tuple[Path, Path]:
    """A small slice of the shipped SST-2, so peers start fast; the real loader and partitions still run."""
    from declora.learn.examples import default_dataset

    paths = default_dataset()
    out = []
    for src, n, name in ((paths.train, n_train, "train.tsv"), (paths.eval, n_dev, "dev.tsv")):
        lines = gzip.open(src, "rt").read().splitlines()
        dst = tmp_path / name
        dst.write_text("\n".join(lines[: n + 1]) + "\n")
        out.append(dst)
    return out[0], out[1]


def simulate(tmp_path: Path, *args: str, name: str = "run", timeout: float = 240) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    return proc, out


def classification_args(tmp_path: Path) -> list[str]:
    train, dev = sst2_slice(tmp_path)
    return ["--model", "tiny-bert", "--data", str(train), "--eval-data", str(dev), "--batch-size", "8",
            "--max-length", "32", "--local-steps", "2", "--rounds", "2", "--eval-every", "1", "--eval-samples", "32"]


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def check_run(out: Path, peers: int, rounds: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["peers"] == peers and summary["rounds_completed"] == rounds
    assert len(summary["rounds"]) == rounds
    for key in ("mode", "codec", "bytes_sent_total", "wall_seconds", "final"):
        assert key in summary
    for i in range(peers):
        records = [json.loads(line) for line in (out / "metrics" / f"peer-{i}.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == list(range(rounds))
    assert json.loads((out / "config.json").read_text())["rounds"] == rounds
    return summary


# Every mode runs bit for bit over ZeroMQ and the in-process network in tests/integration/test_golden.py; here the
# launcher, summary, plots and saved results, for a factor-averaging mode and a merging one.
@pytest.mark.parametrize("mode,ranks,codec", [
    ("gossip", "4", "int8"),
    ("stack", "4,2,3", "fp16"),
])
def test_every_mode_runs_with_real_processes(tmp_path, mode, ranks, codec):
    # Every neighbour waited for (counted below): tiny rounds take milliseconds, so the adaptive deadline's 2 s floor
    # is all a peer started late on a loaded machine would get.
    proc, out = simulate(tmp_path, *classification_args(tmp_path), "--peers", "3", "--mode", mode, "--ranks", ranks,
                         "--codec", codec, "--no-adaptive-deadline")
    ok(proc)
    summary = check_run(out, peers=3, rounds=2)
    final = summary["final"]
    assert 0.0 <= final["accuracy_min"] <= final["accuracy_mean"] <= final["accuracy_max"] <= 1.0
    assert summary["bytes_sent_total"] > 0
    # Every peer heard both ring neighbours in every round.
    for i in range(3):
        records = [json.loads(x) for x in (out / "metrics" / f"peer-{i}.jsonl").read_text().splitlines()]
        assert all(r["neighbours_heard"] == 2 for r in records)
        # Stack mode merged rounds into the base, so it saves the whole merged model, not an adapter.
        saved = "config.json" if mode == "stack" else "adapter_config.json"
        assert (out / "adapters" / f"peer-{i}" / saved).exists()
    assert "round   2/2" in proc.stdout
    # Round 1 evaluated a 32-example subset (--eval-samples), the last round the whole eval set.
    assert [r["eval_samples"] for r in records] == [32, 64]
    assert (out / "eval_accuracy.png").stat().st_size > 0


def test_gossip_bytes_match_the_codec(tmp_path):
    """int8 sends about a quarter of fp32's bytes for the same adapter."""
    args = classification_args(tmp_path)
    sizes = {}
    for codec in ("fp32", "int8"):
        proc, out = simulate(tmp_path, *args, "--peers", "2", "--topology", "complete", "--codec", codec,
                             "--rounds", "1", "--local-steps", "1", name=codec)
        ok(proc)
        sizes[codec] = json.loads((out / "summary.json").read_text())["bytes_sent_total"]
    assert 0.2 < sizes["int8"] / sizes["fp32"] < 0.45


# flora runs bit for bit as real processes in tests/integration/test_golden.py, and every method over ZeroMQ there.
@pytest.mark.parametrize("method,ranks", [("fedit", "4"), ("flexlora", "4,2,3")])
def test_server_baseline_each_aggregation(tmp_path, method, ranks):
    proc, out = simulate(tmp_path, *classification_args(tmp_path), "--peers", "3", "--server", method,
                         "--ranks", ranks)
    ok(proc)
    summary = check_run(out, peers=3, rounds=2)
    assert summary["mode"] == f"server:{method}"
    server = summary["server"]
    assert [r["round"] for r in server] == [0, 1]
    assert all(r["clients_heard"] == 3 and r["bytes_in"] > 0 and r["bytes_out"] > 0 for r in server)


def test_centralized_reference_uses_the_same_compute(tmp_path):
    proc, out = simulate(tmp_path, *classification_args(tmp_path), "--peers", "3", "--mode", "centralized")
    ok(proc)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(x) for x in (out / "metrics" / "peer-0.jsonl").read_text().splitlines()]
    # 3 peers x 2 local steps x batch 8 per round, in one process.
    assert [r["train_samples"] for r in records] == [48, 48]
    assert summary["final"]["accuracy_mean"] >= 0.0


def test_causal_lm_on_dolly_files_with_heterogeneous_ranks(tmp_path):
    proc, out = simulate(tmp_path, "--model", "tiny-llama", "--data", str(DOLLY), "--partition", "files",
                         "--peers", "3", "--mode", "svd", "--ranks", "4,2,2", "--rounds", "2", "--local-steps", "2",
                         "--batch-size", "4", "--max-length", "64")
    ok(proc)
    summary = check_run(out, peers=3, rounds=2)
    assert summary["final"]["loss_mean"] > 0 and summary["final"]["perplexity_mean"] > 1
    assert "eval loss" in proc.stdout


def test_bad_config_is_one_line(tmp_path):
    proc, _ = simulate(tmp_path, "--peers", "4", "--ranks", "8,4")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--ranks" in proc.stderr
    proc, _ = simulate(tmp_path, "--model", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_dead_peer_fails_the_run_and_names_it(tmp_path):
    """Without fault tolerance, a peer that dies makes simulate say which one and exit non-zero."""
    args = classification_args(tmp_path)
    out = tmp_path / "dies"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1", *args,
           "--peers", "3", "--rounds", "40", "--deadline-s", "20"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    try:
        victim = wait_for_round(out, peer=1, round_=0, timeout=120)
        os.kill(victim, signal.SIGKILL)
        stdout, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, stdout
    assert "peer 1 died" in stdout


def wait_for_round(out: Path, peer: int, round_: int, timeout: float) -> int:
    """Wait until `peer` has finished `round_`; return the peer process's pid (from its log's /proc entry)."""
    deadline = time.monotonic() + timeout
    metrics = out / "metrics" / f"peer-{peer}.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and any(json.loads(x)["round"] >= round_ for x in metrics.read_text().splitlines() if x):
            return find_peer_pid(out, peer)
        time.sleep(0.2)
    raise AssertionError(f"peer {peer} did not finish round {round_} within {timeout} s")


def find_peer_pid(out: Path, peer: int) -> int:
    config = str(out / "config.json")
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "declora.node.peer" in args and config in args and args[args.index("--peer-id") + 1] == str(peer):
            return int(pid_dir.name)
    raise AssertionError(f"no process for peer {peer}")


def test_killed_run_resumes_at_the_right_round(tmp_path):
    """Kill every process after round 2 of ROUNDS, then --resume: the run ends at the last round with the same config
    and every round in the metrics exactly once. ROUNDS is large because tiny-model rounds take well under a second
    on a quiet machine: with 4 rounds the run could finish before the kill landed."""
    ROUNDS = 30
    args = classification_args(tmp_path)
    out = tmp_path / "resume"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1", *args,
              "--peers", "3", "--rounds", str(ROUNDS), "--mode", "stack", "--ranks", "4,2,3"]
    launcher = subprocess.Popen(common, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env=env, start_new_session=True)
    try:
        for peer in range(3):
            wait_for_round(out, peer=peer, round_=1, timeout=180)
        pids = [find_peer_pid(out, p) for p in range(3)]
        os.killpg(launcher.pid, signal.SIGKILL)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    config_before = json.loads((out / "config.json").read_text())
    done = {p: max(json.loads(x)["round"] for x in (out / "metrics" / f"peer-{p}.jsonl").read_text().splitlines())
            for p in range(3)}
    assert all(d < ROUNDS - 1 for d in done.values()), done  # it really was cut short

    proc = subprocess.run(common + ["--resume"], capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    ok(proc)
    summary = check_run(out, peers=3, rounds=ROUNDS)
    config_after = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in config_after.items() if k != "resume"} == \
           {k: v for k, v in config_before.items() if k != "resume"}
    logs = "".join((out / "logs" / f"peer-{p}.log").read_text() for p in range(3))
    assert "resumed from" in logs
    assert summary["final"]["accuracy_mean"] >= 0.0
