"""A learner's own random stream (dropout masks, fresh adapter inits), so that several learners can share a process.

Hugging Face models draw dropout masks from torch's global generator, and torch seeds that generator at random in
every new process. A learner therefore keeps its own generator state, seeded from the run's seed and its peer id,
and swaps it in for as long as it touches the model. A process-wide lock makes the swap safe when peers of an
in-process network train on threads of one process: each draws exactly what it would draw in a process of its own.
"""
from __future__ import annotations

import threading

import torch

_GLOBAL_RNG = threading.RLock()  # one global generator per process: one learner at a time may use it


class RngStream:
    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.state = torch.Generator().manual_seed(int(seed)).get_state()
        self.cuda_state = (torch.Generator(device=self.device).manual_seed(int(seed)).get_state()
                           if self.device.type == "cuda" else None)
        self._depth = 0
        self._outer: tuple | None = None

    def __enter__(self) -> "RngStream":
        _GLOBAL_RNG.acquire()
        if self._depth == 0:
            self._outer = (torch.get_rng_state(), self._cuda_get())
            torch.set_rng_state(self.state)
            if self.cuda_state is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.state = torch.get_rng_state()
            if self.cuda_state is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.device)
            cpu, cuda = self._outer
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, self.device)
        _GLOBAL_RNG.release()

    def _cuda_get(self):
        return torch.cuda.get_rng_state(self.device) if self.cuda_state is not None else None
