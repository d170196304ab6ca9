"""Before a launcher starts peers on GPUs: will they fit? The plan (learn.memory_plan) against each GPU's free
memory, and one ConfigError line that says how many peers fit per GPU and what to change, instead of a peer running
out of memory mid-run. On the CPU (--cpu, or no CUDA) nothing is checked.

The free memory is read in a short child process: torch.cuda.mem_get_info creates a CUDA context (hundreds of MB)
on every GPU it asks, which the launcher would otherwise hold for the whole run.
"""
from __future__ import annotations

import json
import subprocess
import sys

from declora.config import ConfigError, RunConfig
from declora.learn.memory_plan import describe, gpu_of, peers_that_fit, process_plan

FREE_MEMORY_SCRIPT = ("import json, torch; print(json.dumps([torch.cuda.mem_get_info(i)[0] "
                      "for i in range(torch.cuda.device_count())]))")


def cuda_in_use(cfg: RunConfig) -> bool:
    if cfg.cpu:
        return False
    import torch

    return torch.cuda.is_available()  # no CUDA context is created by asking


def free_gpu_memory() -> list[int]:
    """Free bytes on every visible CUDA device, indexed as CUDA_VISIBLE_DEVICES numbers them."""
    out = subprocess.run([sys.executable, "-c", FREE_MEMORY_SCRIPT], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise ConfigError(f"could not read the GPUs' free memory: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def check_gpu_fit(cfg: RunConfig, groups: list[list[int]], free: list[int] | None = None,
                  cuda: bool | None = None) -> None:
    """`groups`: the peer ids of each process to start (the server excluded). Raises ConfigError when the peers
    placed on some GPU need more than it has free. `free` (bytes per visible GPU) is read, and whether CUDA is in use
    detected, when not given."""
    if not groups or not (cuda_in_use(cfg) if cuda is None else cuda and not cfg.cpu):
        return
    free = free_gpu_memory() if free is None else free
    gpus = cfg.gpu_list() or list(range(len(free)))
    bad = [g for g in gpus if not 0 <= g < len(free)]
    if bad:
        raise ConfigError(f"--gpus {cfg.gpus}: GPU ids {bad} are not visible (this host has {len(free)} CUDA devices)")
    shape, weights = run_shape(cfg), "nf4" if cfg.base_4bit else "bfloat16"
    seq, batch = cfg.max_length, max(1, cfg.batch_size // max(1, cfg.grad_accum))
    on_gpu: dict[int, list[int]] = {}
    for group in groups:
        on_gpu.setdefault(gpus[gpu_of(group[0], cfg.peers_per_process, len(gpus))], []).append(len(group))
    for gpu, sizes in sorted(on_gpu.items()):
        plans = [process_plan(shape, n, batch, seq, weights) for n in sizes]
        need = sum(p.total for p in plans)
        if need <= free[gpu]:
            continue
        peers = sum(sizes)
        fit = peers_that_fit(shape, free[gpu], cfg.peers_per_process, batch, seq, weights)
        shared = peers_that_fit(shape, free[gpu], peers, batch, seq, weights)
        first = plans[0]
        raise ConfigError(
            f"{peers} peers will not fit on GPU {gpu}: they need about {describe(need)} ({len(sizes)} processes; each "
            f"holds a base of {describe(first.base)}, activations of {describe(first.activations)} and a CUDA context; "
            f"{describe(first.trainable / first.peers)} of adapter and optimizer per peer) but {describe(free[gpu])} "
            f"is free; {fit} fit per GPU this way. Use fewer peers per GPU (--peers, --gpus), "
            f"--peers-per-process {peers} (one shared base: {shared} fit), a smaller --batch-size or --max-length"
            + ("" if cfg.base_4bit else ", or --base-4bit"))


def run_shape(cfg: RunConfig):
    """The ModelShape of the run's model at the largest rank of the run, from its config alone."""
    from declora.learn.memory_plan import shape_for_spec
    from declora.node.workload import model_spec

    return shape_for_spec(model_spec(cfg), max(cfg.rank_list()))
