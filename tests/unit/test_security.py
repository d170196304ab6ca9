"""declora.wire.security without sockets: key files, loading, the plain-text rule, and `declora keys make`."""
import os
import stat

import pytest

from declora.cli import main
from declora.wire.security import (
    SecurityError,
    check_plaintext,
    generate_keys,
    is_local_endpoint,
    load_public_keys,
    load_security,
    public_key_path,
    secret_key_path,
)


def test_generate_keys_writes_private_secrets_and_shareable_publics(tmp_path):
    written = generate_keys(tmp_path / "k", [0, 1, 2])
    assert len(written) == 6
    for i in range(3):
        s, p = secret_key_path(tmp_path / "k", i), public_key_path(tmp_path / "k", i)
        assert s in written and p in written
        assert stat.S_IMODE(s.stat().st_mode) == 0o600
        assert "secret-key" in s.read_text() and "secret-key" not in p.read_text()
    pubs = load_public_keys(tmp_path / "k" / "public")
    assert sorted(pubs) == [0, 1, 2] and len(set(pubs.values())) == 3


def test_load_security_and_no_secret_in_repr(tmp_path):
    generate_keys(tmp_path, [0, 1])
    cfg = load_security(tmp_path, 1)
    assert cfg.peer_id == 1 and cfg.public_key == cfg.public_keys[1] and len(cfg.secret_key) == 40
    assert cfg.secret_key.decode() not in repr(cfg) and cfg.secret_key.decode() not in str(cfg)
    assert cfg.key_of(0) == load_public_keys(tmp_path / "public")[0]


def test_existing_keys_are_not_replaced_by_accident(tmp_path):
    generate_keys(tmp_path, [0])
    before = secret_key_path(tmp_path, 0).read_text()
    with pytest.raises(SecurityError, match="--force"):
        generate_keys(tmp_path, [0, 1])
    assert secret_key_path(tmp_path, 0).read_text() == before
    generate_keys(tmp_path, [0], overwrite=True)
    assert secret_key_path(tmp_path, 0).read_text() != before


def test_loading_refuses_missing_loose_and_mismatched_keys(tmp_path):
    with pytest.raises(SecurityError, match="declora keys make"):
        load_security(tmp_path, 0)
    generate_keys(tmp_path, [0, 1])
    os.chmod(secret_key_path(tmp_path, 0), 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        load_security(tmp_path, 0)
    os.chmod(secret_key_path(tmp_path, 0), 0o600)
    public_key_path(tmp_path, 0).write_text(public_key_path(tmp_path, 1).read_text())
    with pytest.raises(SecurityError, match="does not match"):
        load_security(tmp_path, 0)
    cfg = load_security(tmp_path, 1)
    with pytest.raises(SecurityError, match="no public key for peer 7"):
        cfg.key_of(7)


def test_a_corrupt_key_file_is_reported_without_its_contents(tmp_path):
    generate_keys(tmp_path, [0])
    path = secret_key_path(tmp_path, 0)
    secret_line = [ln for ln in path.read_text().splitlines() if "secret-key" in ln][0]
    path.write_text(path.read_text().replace("public-key", "publik-key"))
    with pytest.raises(SecurityError) as e:
        load_security(tmp_path, 0)
    assert secret_line.split('"')[1] not in str(e.value)


@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:7", True), ("tcp://127.3.2.1:9", True),
    ("ipc:///tmp/declora.sock", True), ("inproc://x", True), ("tcp://10.0.0.5:5555", False),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://node3:5555", False), ("udp://127.0.0.1:1", False),
])
def test_is_local_endpoint(endpoint, local):
    assert is_local_endpoint(endpoint) is local


def test_plain_text_only_on_loopback_unless_insecure():
    check_plaintext(["tcp://127.0.0.1:1", "ipc:///tmp/a"])
    with pytest.raises(SecurityError, match=r"tcp://10\.0\.0\.5:1.*declora keys make"):
        check_plaintext(["tcp://127.0.0.1:1", "tcp://10.0.0.5:1"])
    check_plaintext(["tcp://10.0.0.5:1"], allow_nonlocal=True)


def test_zmq_transport_refuses_plain_text_to_another_host_before_opening_sockets():
    from declora.wire.zmq_transport import ZmqTransport

    with pytest.raises(SecurityError, match="declora keys make"):
        ZmqTransport(0, "tcp://127.0.0.1:*", {1: "tcp://192.168.1.20:6000"})
    ZmqTransport(0, "tcp://127.0.0.1:*", {1: "tcp://192.168.1.20:6000"}, allow_plaintext_nonlocal=True)  # not started


def test_cli_keys_make_prints_paths_never_secrets(tmp_path, capsys):
    assert main(["keys", "make", "--peers", "2", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    secret = load_security(tmp_path / "k", 0).secret_key.decode()
    assert str(secret_key_path(tmp_path / "k", 0)) in out and secret not in out
    assert main(["keys", "make", "--ids", "5,7", "--out", str(tmp_path / "k")]) == 0
    assert sorted(load_public_keys(tmp_path / "k" / "public")) == [0, 1, 5, 7]
    assert main(["keys", "make", "--peers", "2", "--out", str(tmp_path / "k")]) == 2  # exists: refuse
    assert "--force" in capsys.readouterr().err
    assert main(["keys", "make", "--ids", "1,x", "--out", str(tmp_path / "k")]) == 2
