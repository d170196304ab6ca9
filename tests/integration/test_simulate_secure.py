"""`declora simulate` is secure by default: it makes CURVE keys for the run (secret files 0600) and every link uses
them, so a local process that speaks as a peer gets nothing in, in plain text or with a key of its own."""
from __future__ import annotations

import json
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
    for _ in range(10):
        s.send_multipart([bytes(memoryview(f).cast("B")) for f in to_frames(make_message(Kind.PING, 1, 0))])
        s.send_multipart([b"\xc1 not msgpack", b"x" * 100])
        time.sleep(0.1)
    ctx.destroy(linger=500)


def run_and_attack(tmp_path, *extra: str) -> tuple[str, object]:
    import os
    import subprocess
    import sys

    from .test_simulate import REPO

    out = tmp_path / "run"
    args = [*classification_args(tmp_path), "--peers", "2", "--rounds", "12", "--local-steps", "4", *extra]
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
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
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
    output, out = run_and_attack(tmp_path, "--insecure")
    assert "over plain text" in output and not (out / "keys").exists()
    assert "dropped a message from 1" in (out / "logs" / "peer-0.log").read_text()
