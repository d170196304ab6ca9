"""What the benchmarks share: where results go and the machine they were measured on, the Llama-2-7B-shaped test
adapter, the environment of worker processes, and plotting without a display.

Imported as `benchmarks.common`; torch and matplotlib are imported only by the helpers that need them, so that a
parent process that only drives workers (bench_scale) stays small.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# Llama-2-7B with LoRA on q_proj and v_proj: 32 layers x 2 modules, each A (r x 4096) and B (4096 x r).
LLAMA7B_LAYERS = 32
LLAMA7B_HIDDEN = 4096
LLAMA7B_MODULES = ("q_proj", "v_proj")


# ---- the machine, and the results folder ----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for mod in ("transformers", "peft", "zmq", "msgpack", "numpy", "networkx"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is just not recorded
            pass
    return info


def write_result(name: str, payload: dict) -> Path:
    """Write `payload` plus the machine description to benchmarks/results/<name>.json and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2) + "\n")
    return path


def judged_value(record: dict, prefix: str = "eval_") -> float | None:
    """The value, in one peer's round record, of the metric that judges the run (the record's `metric`, e.g. mcc
    on CoLA; records written before --metric carry none and were judged by accuracy). None: not evaluated that
    round. The benchmarks' result names say "accuracy": on their SST-2 data the judging metric is accuracy.
    prefix "dev_": the dev set's value that a --holdout run records at its last round."""
    return record.get(prefix + record.get("metric", "accuracy").replace("-", "_"))


# ---- the test adapter -----------------------------------------------------------------------------------------------
def llama7b_adapter(seed, *, rank: int = 16, alpha: float = 32.0, a_std: float = 0.02, b_std: float = 0.01):
    """A random Llama-2-7B-shaped LoRA adapter: r=`rank` on q_proj and v_proj of 32 layers, i.e. 64 modules with
    A (rank x 4096) ~ N(0, a_std^2) and B (4096 x rank) ~ N(0, b_std^2), fp32, keyed like a PEFT model.

    `seed` is an int or a torch.Generator (several adapters drawn one after another from one generator). Per
    module, layer by layer and q before v, A is drawn before B."""
    import torch

    from declora.core.factors import Adapter, LoraFactor

    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    factors = {}
    for layer in range(LLAMA7B_LAYERS):
        for name in LLAMA7B_MODULES:
            A_ri = torch.randn(rank, LLAMA7B_HIDDEN, generator=gen) * a_std
            B_or = torch.randn(LLAMA7B_HIDDEN, rank, generator=gen) * b_std
            factors[f"base_model.model.model.layers.{layer}.self_attn.{name}"] = LoraFactor(A_ri, B_or, alpha)
    return Adapter(factors)


def llama7b_tensors(seed: int, sigma: float) -> list:
    """The 128 factor tensors of `llama7b_adapter` with every entry ~ N(0, sigma^2): the 64 A (16 x 4096) first,
    then the 64 B (4096 x 16), as a codec sees them."""
    factors = list(llama7b_adapter(seed, a_std=sigma, b_std=sigma).factors.values())
    return [f.A for f in factors] + [f.B for f in factors]


# ---- worker processes, load, plots ----------------------------------------------------------------------------------
def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's worker process: this one's, one thread per math library, plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def wait_for_load(limit: float, max_wait_s: float, poll_s: float = 30.0) -> list[float]:
    """Wait (at most `max_wait_s`) until the 1-minute load average is at most `limit`; the load averages then."""
    waited = 0.0
    while os.getloadavg()[0] > limit and waited < max_wait_s:
        print(f"load {os.getloadavg()[0]:.1f} > {limit}: waiting ({waited:.0f}/{max_wait_s:.0f} s)", flush=True)
        time.sleep(poll_s)
        waited += poll_s
    return list(os.getloadavg())


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
