"""Every bad input a user can give stops the command with one line on stderr that says what is wrong and how to fix
it, and exit status 2: no traceback, no process started. The commands run in this process (`declora.cli.main`);
every failure here happens before a model is built or a socket is opened. Addresses outside this host come from
TEST-NET-1 (192.0.2.0/24) and are refused by a string check: nothing is ever sent to them."""
from __future__ import annotations

import pytest

from declora.cli import main

TINY = ["--model", "tiny-bert"]
FAR_HOSTS = ["--hosts", "192.0.2.1,192.0.2.2", "--base-port", "7000"]


def one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"exit {rc}, stderr: {err}"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"declora {argv[0]}: error: "), err
    return err


def test_missing_topology_file(capsys, tmp_path):
    err = one_line_error(capsys, ["simulate", *TINY, "--topology", str(tmp_path / "no.toml"), "--out", str(tmp_path)])
    assert "no such topology file" in err and "ring:8" in err


def test_invalid_topology_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("edges = [[0, 1], [1, 'x']]\n")
    err = one_line_error(capsys, ["simulate", *TINY, "--topology", str(bad), "--peers", "2", "--out", str(tmp_path)])
    assert str(bad) in err


def test_topology_with_another_peer_count(capsys, tmp_path):
    err = one_line_error(capsys, ["simulate", *TINY, "--topology", "ring:4", "--peers", "3", "--out", str(tmp_path)])
    assert "4 nodes but --peers is 3" in err


def test_missing_keys_folder(capsys, tmp_path):
    err = one_line_error(capsys, ["simulate", *TINY, "--keys", str(tmp_path / "keys"), "--out", str(tmp_path / "r")])
    assert "no such folder" in err and "declora keys make" in err


def test_keys_folder_without_this_runs_keys(capsys, tmp_path):
    (tmp_path / "keys").mkdir()
    err = one_line_error(capsys, ["simulate", *TINY, "--keys", str(tmp_path / "keys"), "--out", str(tmp_path / "r")])
    assert "no secret key for peer" in err and "declora keys make" in err


@pytest.mark.parametrize("command", ["peer", "launch-node"])
def test_plain_text_beyond_this_host(capsys, tmp_path, command):
    who = ["--peer-id", "0"] if command == "peer" else []
    err = one_line_error(capsys, [command, *who, *TINY, "--peers", "2", *FAR_HOSTS, "--out", str(tmp_path)])
    assert "refusing plain text" in err and "--insecure" in err


@pytest.mark.parametrize("line,expected", [('peers = "x"', "peers must be an integer, got 'x'"),
                                           ("lr = true", "lr must be a number"),
                                           ('codec = "zip"', "--codec must be one of"),
                                           ('head_codec = "int8"', "--head-codec must be one of fp32, same"),
                                           ('mode = "mean"', "--mode must be one of"),
                                           ("pears = 3", "unknown key 'pears'")])
def test_bad_values_in_a_config_file(capsys, tmp_path, line, expected):
    path = tmp_path / "run.toml"
    path.write_text(line + "\n")
    err = one_line_error(capsys, ["simulate", *TINY, "--config", str(path), "--out", str(tmp_path / "r")])
    assert expected in err


def test_unwritable_out(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    err = one_line_error(capsys, ["simulate", *TINY, "--out", str(tmp_path / "a-file" / "run")])
    assert "cannot write there" in err


@pytest.mark.parametrize("command", ["peer", "server"])
def test_corrupt_address_book(capsys, tmp_path, command):
    (tmp_path / "addresses.json").write_text("{not json")
    role = ["--peer-id", "0"] if command == "peer" else ["--server", "fedit"]
    err = one_line_error(capsys, [command, *role, *TINY, "--peers", "2", "--out", str(tmp_path)])
    assert "addresses.json: not a valid address book" in err and "delete it" in err


def test_keys_into_an_unwritable_folder(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    err = one_line_error(capsys, ["keys", "make", "--peers", "2", "--out", str(tmp_path / "a-file" / "keys")])
    assert "cannot write keys there" in err


@pytest.mark.parametrize("env,expected", [({"NODE_RANK": "x", "NNODES": "2"}, "must be integers"),
                                          ({"NODE_RANK": "5", "NNODES": "2"}, "node 5 of 2 has no peers")])
def test_launch_node_with_a_bad_environment(capsys, tmp_path, monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    err = one_line_error(capsys, ["launch-node", *TINY, "--peers", "4", "--out", str(tmp_path)])
    assert expected in err


def test_a_data_file_without_the_columns(capsys, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    err = one_line_error(capsys, ["simulate", *TINY, "--data", str(bad), "--eval-data", str(bad),
                                  "--out", str(tmp_path / "r")])
    assert "no text column found" in err and not (tmp_path / "r" / "logs").exists()  # no process was started


@pytest.mark.parametrize("argv,expected", [(["--mode", "svd", "--robust", "median"], "use robust = 'clip'"),
                                           (["--attack", "huge"], "needs --attackers"),
                                           (["--attack", "huge", "--attackers", "9"], "peer ids in 0..3"),
                                           (["--plausible-ratio", "0.5"], "--plausible-ratio must be > 1")])
def test_robustness_flags(capsys, tmp_path, argv, expected):
    err = one_line_error(capsys, ["simulate", *TINY, *argv, "--out", str(tmp_path / "r")])
    assert expected in err


def test_stack_mode_resume_without_a_common_checkpoint_round(capsys, tmp_path):
    """Gossip resumes each peer from its own latest checkpoint and lets catch-up align them
    (tests/integration/test_restart.py); stack mode cannot catch up (its state is the merged base), so it stops."""
    for peer, rounds in ((0, (7, 8)), (1, (3, 4))):
        folder = tmp_path / "checkpoints" / f"peer-{peer}"
        folder.mkdir(parents=True)
        for r in rounds:
            (folder / f"round-{r}.pt").write_bytes(b"")
    err = one_line_error(capsys, ["simulate", *TINY, "--peers", "2", "--mode", "stack", "--resume",
                                  "--out", str(tmp_path)])
    assert "no checkpoint round in common (peer 0: 7,8; peer 1: 3,4) and with --mode stack" in err
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "peer-0").iterdir()) == ["round-7.pt", "round-8.pt"]


@pytest.mark.parametrize("argv,expected", [(["--mode", "stack"], "with --mode stack a restarted peer cannot catch up"),
                                           (["--server", "fedit"], "with --server fedit"),
                                           (["--max-restarts", "-1"], "--max-restarts must be >= 0")])
def test_restart_dead_where_a_peer_cannot_rejoin(capsys, tmp_path, argv, expected):
    err = one_line_error(capsys, ["simulate", *TINY, "--restart-dead", *argv, "--out", str(tmp_path / "r")])
    assert expected in err and not (tmp_path / "r" / "logs").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--mode", "svd", "--ranks", "8,4,4,2", "--drift", "kgt"], "needs factor averaging, not --mode svd"),
    (["--mode", "stack", "--drift", "ffa"], "needs factor averaging, not --mode stack"),
    (["--server", "flora", "--drift", "qgm"], "needs factor averaging, not --server flora"),
    (["--drift", "nesterov", "--outer-momentum", "1.0"], "--outer-momentum in [0, 1)"),
    (["--drift", "qgm", "--qgm-beta", "-0.1"], "--qgm-beta and --qgm-mu must be in [0, 1)"),
])
def test_drift_correction_flags(capsys, tmp_path, argv, expected):
    err = one_line_error(capsys, ["simulate", *TINY, *argv, "--out", str(tmp_path)])
    assert expected in err, err
