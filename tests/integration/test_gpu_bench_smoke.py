"""benchmarks/bench_gpu.py end to end in its --smoke mode (a tiny LLaMA config) on whatever device there is: the
random model saved and reloaded as a checkpoint folder, the memory plan read from its config, the plain peft loop.
The simulate stages run the same `declora simulate` the integration tests run; here they are left out (four peer
processes would take minutes on a small machine): scripts/gpu_check.sh runs them all on a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_smoke_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "bench_gpu_smoke.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--smoke", "--only", "plan,plain", "--out",
                           str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    model = result["stages"]["model"]
    assert model["params"] == model["params_by_formula"]  # the docstring's parameter count is the model's
    plain = result["stages"]["plain"]
    assert plain["tokens_per_s"] > 0 and plain["loss"] > 0
    plan = result["stages"]["plan"]
    assert plan["nf4"]["base_gib"] < plan["bf16"]["base_gib"]
    assert "cpu" in result["machine"] and "nvidia_smi" in result["machine"]
