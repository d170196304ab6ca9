"""`declora simulate` is secure by default: it makes CURVE keys for the run (secret files 0600) and every link uses
them, so a local process that speaks as a peer gets nothing in, in plain text or with a key of its own."""
from __future__ import annotations

import json
import signal
import stat
import time

import pytest
import zmq

from declora.wire.protocol import Kind, make_message, to_frames

from .test_simulate import classification_args

pytestmark = pytest.mark.slow


def attack(endpoint: str, curve: bool) -> None:
    """Speak as peer 1 to peer 0 (routing id 1): PINGs and a message with a garbage header, which peer 0 logs as
    dropped if it ever reaches it."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.routing_id = b"1"
    s.linger = 500
    if curve:  # a key pair of its own: not one of the run's keys
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        s.curve_serverkey = zmq.curve_keypair()[0]
    s.connect(endpoint)
    s.sndtimeo = 1000  # a DEALER with no connection blocks on send: never hang the test on it
    for _ in range(10):
        try:
            s.send_multipart([bytes(memoryview(f).cast("B")) for f in to_frames(make_message(Kind.PING, 1, 0))])
            s.send_multipart([b"\xc1 not msgpack", b"x" * 100])
        except zmq.Again:
            pass
        time.sleep(0.1)
    ctx.destroy(linger=500)


def run_and_attack(tmp_path, *extra: str, finish: bool = True) -> tuple[str, object]:
    import os
    import subprocess
    import sys

    from .test_simulate import REPO

    out = tmp_path / "run"
    # A short deadline: in plain text the impersonator takes over peer 1's routing id (ZeroMQ hands a ROUTER
    # identity to the newest connection), so a round message of the real peer 1 can be lost on the way.
    # Enough rounds that the run is still going while the impersonator tries (a tiny round takes ~50 ms).
    args = [*classification_args(tmp_path), "--peers", "2", "--rounds", "300", "--local-steps", "2",
            "--eval-every", "100", "--deadline-s", "10", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not (out / "metrics" / "peer-0.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)  # peer 0 is up and running rounds
        endpoint = json.loads((out / "addresses.json").read_text())["0"]
        attack(endpoint, curve=False)
        attack(endpoint, curve=True)
        assert proc.poll() is None, "the run ended before the impersonator was done: give it more rounds"
        if not finish:
            time.sleep(2.0)  # let peer 0 log what reached it
            proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == (0 if finish else 128 + signal.SIGTERM), output
    return output, out


def test_a_default_run_has_keys_and_lets_no_impersonator_in(tmp_path):
    output, out = run_and_attack(tmp_path)
    assert "over CURVE" in output
    secret = out / "keys" / "peer-0.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert json.loads((out / "config.json").read_text())["keys"] == str(out / "keys")
    log = (out / "logs" / "peer-0.log").read_text()
    assert "refused a connection" in log
    assert "dropped a message from 1" not in log  # nothing of the impersonator's reached the peer


def test_insecure_runs_in_plain_text_where_an_impersonator_gets_in(tmp_path):
    """The same attack on an --insecure run: its garbage reaches peer 0 as if peer 1 had sent it (and is dropped
    there only because it is garbage). This is what the default keys prevent."""
    # Stopped after the attack: in plain text the impersonator also takes peer 1's ROUTER identity at peer 0
    # (ZeroMQ hands an identity to the newest connection), which can cost the real peer 1 its messages.
    output, out = run_and_attack(tmp_path, "--insecure", finish=False)
    assert "over plain text" in output and not (out / "keys").exists()
    assert "dropped a message from 1" in (out / "logs" / "peer-0.log").read_text()
