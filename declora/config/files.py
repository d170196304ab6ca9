"""Where a run config comes from: flags (one per field), TOML files whose keys match them, a run's own
config.json on resume, and the precedence defaults < file < flags that `resolve` applies before checking."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from declora.config.checks import validate
from declora.config.fields import ConfigError, RunConfig


# ---- flags -------------------------------------------------------------------------------------------------
def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per field; defaults are None so that `resolve` can tell 'not given' from 'given'."""
    parser.add_argument("--config", default=None, help="TOML file whose keys match these flags")
    for f in fields(RunConfig):
        if f.name in skip:
            continue
        kw = {"help": f.metadata["help"] + f" (default: {f.default!r})", "default": None, "dest": f.name}
        if f.type in ("bool", bool):
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            caster = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            parser.add_argument(flag_name(f.name), type=caster, **kw)


def add_peer_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of one peer process (`declora peer`, `python -m declora.node.peer`)."""
    parser.add_argument("--peer-id", type=int, required=True, help="this peer's id (0..peers-1)")
    parser.add_argument("--resume-round", type=int, default=None,
                        help="with --resume: the round whose checkpoint to load (default: the latest); give every "
                             "peer the same one")
    add_flags(parser)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the parameter-server process (`declora server`, `python -m declora.node.server`)."""
    parser.add_argument("--peer-id", type=int, default=None, help="ignored: the server's id is --peers")
    parser.add_argument("--resume-round", type=int, default=None,
                        help="with --resume: the clients resume after this round, so the server starts at the next")
    add_flags(parser)


def load_toml(path: str | Path) -> dict:
    """Read a run config file: TOML, or the config.json that a run writes (so a run can be repeated from it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    if path.suffix == ".json":
        try:
            return normalize_keys(json.loads(path.read_text()), source=str(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    return normalize_keys(raw, source=str(path))


def normalize_keys(raw: dict, source: str) -> dict:
    known = {f.name: f for f in fields(RunConfig)}
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys are the flags of `declora simulate --help`")
        if name == "ranks" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        out[name] = _typed(known[name], value, source, key)
    return out


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _typed(f, value, source: str, key: str):
    """A file's value checked against the field's type (flags are typed by argparse; a file is not)."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
    if not ok:
        raise ConfigError(f"{source}: {key} must be {_KIND_WORDS[kind]}, got {value!r}")
    return float(value) if kind == "float" else value


def make_out_dir(cfg: RunConfig) -> Path:
    """Create the output folder and make sure files can be written there."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".declora-write-test-"):
            pass  # a name of its own: peers of one run check the same folder at the same moment
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e}); choose a folder you can write to") \
            from None
    return out


def resolve(args: argparse.Namespace | None = None, file_values: dict | None = None, **overrides) -> RunConfig:
    """defaults < TOML file (--config) < flags < keyword overrides; then validate."""
    values: dict = {}
    if args is not None and getattr(args, "config", None):
        values.update(load_toml(args.config))
    if file_values:
        values.update(file_values)
    flags = {} if args is None else {f.name: getattr(args, f.name) for f in fields(RunConfig)
                                     if getattr(args, f.name, None) is not None}
    saved = _saved_run(args, values, flags)
    if saved is not None:
        values = {**saved, **values}
    values.update(flags)
    values.update(overrides)
    if saved is not None:
        _check_resume_changes(saved, values, Path(values.get("out", saved["out"])))
    try:
        cfg = RunConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    return validate(cfg)


# What may change when a run is resumed: how long it goes on, how it waits, how it talks and what it writes. The
# rest (data, model, mode, topology, ranks, codec, optimizer, seed ...) defines the run that the checkpoints hold.
RESUMABLE = frozenset({"rounds", "deadline_s", "start_timeout_s", "heartbeat_s", "missed_heartbeats",
                       "fault_tolerant", "keys", "insecure", "eval_every", "eval_samples", "threads", "gpus", "cpu",
                       "restart_dead", "max_restarts", "save_adapters", "keep_checkpoints", "resume", "out",
                       "metric", "report_to", "reference", "adaptive_deadline", "deadline_floor_s", "stale_rounds",
                       "stale_decay", "slow_peers", "chaos", "cut"})


def _saved_run(args, values: dict, flags: dict) -> dict | None:
    """On `--resume` without --config: the run's own DIR/config.json, which the flags given now amend."""
    if not flags.get("resume") or getattr(args, "config", None):
        return None
    path = Path(flags.get("out", values.get("out", RunConfig.out))) / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: {path} is not readable ({e}); fix or remove it") from None


def _check_resume_changes(saved: dict, values: dict, out: Path) -> None:
    changed = sorted(k for k, v in values.items() if k in saved and k not in RESUMABLE and saved[k] != v)
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} -> {values[k]!r}" for k in changed)
        raise ConfigError(f"--resume: {what} differs from {out / 'config.json'}; only "
                          f"{', '.join(sorted(RESUMABLE - {'resume', 'out'}))} may change on resume: drop those flags "
                          f"or start a new run in another --out")


def load_run_config(path: str | Path) -> RunConfig:
    """Read a resolved config written by `write_run_config` (config.json) or a TOML file."""
    return validate(RunConfig(**load_toml(path)))


def write_run_config(cfg: RunConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    tmp.replace(path)
