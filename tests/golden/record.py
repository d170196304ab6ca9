"""Run every golden scenario as real processes (`declora simulate`) and write golden.json.

    .venv/bin/python -m tests.golden.record [--only NAME ...]
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

from tests.golden.scenarios import GOLDEN_FILE, SCENARIOS, check_complete, collect, scenario_config, write_data


def run_simulated(name: str, work: Path) -> dict:
    from declora.config import resolve
    from declora.launch import simulate

    out = work / name
    cfg = resolve(**scenario_config(name, write_data(work / "data"), out))
    log = io.StringIO()
    status = simulate(cfg, out=log)
    if status != 0:
        raise RuntimeError(f"{name} failed (status {status}):\n{log.getvalue()}")
    return collect(out, name)


def run_in_one_process(name: str, work: Path, wire: str) -> dict:
    """The same scenario with every peer on a thread of this process (declora.node.inprocess)."""
    from declora.config import resolve
    from declora.node.inprocess import run_in_process

    out = work / f"{name}-{wire}"
    # Faster HELLOs over ZeroMQ (a neighbour not yet bound is retried after one heartbeat), with the same 20 s of
    # silence before a neighbour counts as down. Liveness timing changes no result, only the wait at start.
    timing = {"heartbeat_s": 0.25, "missed_heartbeats": 80} if wire == "zmq" else {}
    run_in_process(resolve(**scenario_config(name, write_data(work / "data"), out), **timing), wire=wire)
    return collect(out, name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    golden = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or SCENARIOS:
            records = run_simulated(name, Path(tmp))
            problems = check_complete(name, records)
            if problems:
                raise SystemExit("not deterministic, not recorded:\n" + "\n".join(problems))
            golden[name] = records
            print(f"{name}: recorded", flush=True)
    GOLDEN_FILE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
