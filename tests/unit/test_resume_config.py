"""`--resume` continues the run in --out as it was configured (DIR/config.json), amended by the flags given now:
those that may change (rounds, deadlines, keys ...) are applied, any other that differs stops with one line."""
from __future__ import annotations

import pytest

from declora.cli import build_parser
from declora.config import ConfigError, resolve, write_run_config


def parse(*argv: str):
    return resolve(build_parser("simulate").parse_args(["simulate", *argv]))


@pytest.fixture
def saved_run(tmp_path):
    out = tmp_path / "run"
    cfg = parse("--model", "tiny-bert", "--mode", "svd", "--ranks", "4,2,2,2", "--rounds", "10", "--lr", "0.002",
                "--out", str(out))
    write_run_config(cfg, out / "config.json")
    return out


def test_resume_alone_continues_the_saved_run(saved_run):
    cfg = parse("--resume", "--out", str(saved_run))
    assert (cfg.mode, cfg.ranks, cfg.rounds, cfg.lr, cfg.model) == ("svd", "4,2,2,2", 10, 0.002, "tiny-bert")
    assert cfg.resume


def test_resume_applies_the_flags_that_may_change(saved_run, tmp_path):
    cfg = parse("--resume", "--out", str(saved_run), "--rounds", "25", "--deadline-s", "9", "--keys", str(tmp_path))
    assert (cfg.rounds, cfg.deadline_s, cfg.keys, cfg.mode) == (25, 9.0, str(tmp_path), "svd")


def test_resume_refuses_a_change_to_what_defines_the_run(saved_run):
    with pytest.raises(ConfigError, match=r"--resume: lr 0.002 -> 0.1, mode 'svd' -> 'stack' differs from .*config\.json"):
        parse("--resume", "--out", str(saved_run), "--lr", "0.1", "--mode", "stack")


def test_resume_without_a_saved_run_starts_fresh(tmp_path):
    cfg = parse("--model", "tiny-bert", "--resume", "--out", str(tmp_path / "new"))
    assert cfg.mode == "gossip" and cfg.resume


def test_head_codec_defaults_to_fp32_and_defines_the_run(saved_run, tmp_path):
    assert parse("--model", "tiny-bert", "--out", str(tmp_path / "a")).head_codec == "fp32"
    cfg = parse("--model", "tiny-bert", "--codec", "int4h", "--head-codec", "same", "--out", str(tmp_path / "b"))
    assert (cfg.codec, cfg.head_codec) == ("int4h", "same")
    with pytest.raises(ConfigError, match="head_codec 'fp32' -> 'same'"):
        parse("--resume", "--out", str(saved_run), "--head-codec", "same")
