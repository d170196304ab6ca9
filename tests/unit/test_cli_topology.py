"""`declora topology show|check`, in-process through cli.main, plus one real subprocess of each outcome."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from declora.cli import main
from declora.core.mixing import MIXING_RULES, mixing_matrix, spectral_gap
from declora.core.topology_files import load_topology

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = main(["topology", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_degrees_rows_and_gap(capsys):
    code, out, err = run(capsys, "show", "ring:8")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "ring:8: 8 nodes, 8 edges, mixing metropolis"
    assert "   0       2  self:0.3333 1:0.3333 7:0.3333" in lines
    assert "   7       2  self:0.3333 0:0.3333 6:0.3333" in lines
    assert lines[-1].startswith("spectral gap: 0.1953")


def test_show_a_file_with_addresses(capsys):
    code, out, _ = run(capsys, "show", str(REPO / "topologies" / "ring-4-two-nodes.toml"))
    assert code == 0
    assert "   2  127.0.0.1:47102 r=4       2  self:0.3333 1:0.3333 3:0.3333" in out.splitlines()


def test_show_json_is_one_object_with_the_documented_keys(capsys):
    code, out, _ = run(capsys, "show", "torus:4x4", "--json")
    assert code == 0
    summary = json.loads(out)  # fails if anything but one JSON object was printed
    assert summary["n"] == 16 and summary["spec"] == "torus:4x4" and summary["mixing_rule"] == "metropolis"
    assert len(summary["edges"]) == 32 and [0, 1] in summary["edges"]
    assert summary["degrees"] == [4] * 16
    M = np.array(summary["mixing"])
    assert M.shape == (16, 16) and np.allclose(M.sum(axis=1), 1) and M[0, 1] == pytest.approx(0.2)
    assert round(summary["spectral_gap"], 4) == 0.4


def test_show_json_carries_node_addresses(capsys):
    _, out, _ = run(capsys, "show", str(REPO / "topologies" / "ring-4-two-nodes.toml"), "--json")
    nodes = json.loads(out)["nodes"]
    assert nodes[0] == {"id": 0, "host": "127.0.0.1", "port": 47100, "rank": 8}


@pytest.mark.parametrize("rule", MIXING_RULES)
def test_show_json_uses_the_chosen_mixing_rule(capsys, rule):
    _, out, _ = run(capsys, "show", "star:5", "--mixing", rule, "--json")
    summary = json.loads(out)
    expected = mixing_matrix(load_topology("star:5").graph, rule)
    assert summary["mixing_rule"] == rule and np.allclose(summary["mixing"], expected)
    assert summary["spectral_gap"] == pytest.approx(spectral_gap(expected))


def test_png_is_written_and_json_stays_alone_on_stdout(capsys, tmp_path):
    png = tmp_path / "torus.png"
    code, out, _ = run(capsys, "show", "torus:3x4", "--json", "--png", str(png))
    assert code == 0 and json.loads(out)["n"] == 12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_with_text_output_says_where_it_went(capsys, tmp_path):
    png = tmp_path / "er.png"
    code, out, _ = run(capsys, "show", "er:10:0.4:0", "--png", str(png))
    assert code == 0 and out.splitlines()[-1] == f"wrote {png}" and png.stat().st_size > 1000


def test_check_accepts_a_shipped_file(capsys):
    code, out, _ = run(capsys, "check", str(REPO / "topologies" / "exp-16.toml"), "--mixing", "laplacian")
    assert code == 0 and out.startswith("ok: ") and "16 nodes, 56 edges" in out


def _disconnected_file(tmp_path):
    path = tmp_path / "split.toml"
    path.write_text("edges = [[0, 1], [2, 3]]\n")
    return str(path)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["show", "foo:8"], "unknown topology 'foo:8'"),
        (["show", "ring:1"], "N must be an integer >= 2"),
        (["show", "er:8:x:1"], "P must be a number"),
        (["show", "no/such.toml"], "no such topology file"),
        (["show", "DISCONNECTED"], "not connected"),
        (["check", "DISCONNECTED"], "not connected"),
        (["show", "ring:4", "--png", "/nonexistent-dir/x.png"], "cannot write /nonexistent-dir/x.png"),
    ],
)
def test_bad_input_exits_2_with_one_stderr_line(capsys, tmp_path, argv, expected):
    argv = [_disconnected_file(tmp_path) if a == "DISCONNECTED" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("declora topology: error: ") and expected in err


def _declora(*argv):
    return subprocess.run(
        [sys.executable, "-m", "declora.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_subprocess_show_json_exits_0():
    done = _declora("topology", "show", "ring:8", "--json")
    assert done.returncode == 0, done.stderr
    assert round(json.loads(done.stdout)["spectral_gap"], 4) == 0.1953


def test_subprocess_bad_spec_exits_2_with_one_line():
    done = _declora("topology", "show", "ring:0")
    assert done.returncode == 2 and done.stdout == ""
    expected = "declora topology: error: ring:0: N must be an integer >= 2, got '0' (expected ring:N)"
    assert done.stderr.splitlines() == [expected]
