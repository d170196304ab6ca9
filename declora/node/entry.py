"""What a peer process and the server process have in common when they start: log lines tagged with who they are,
the run config resolved from their flags, their torch threads, and a bad config or path ending them with one line
on stderr and exit status 2 (DESIGN.md: bad input gets one clear line)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

import torch

from declora.config import ConfigError, RunConfig, make_out_dir, resolve
from declora.core.graphs import TopologyError
from declora.node.checkpoint import CheckpointError
from declora.node.heap import bound_heap
from declora.node.stack_dump import dump_stacks_on_sigusr1
from declora.wire.security import SecurityError


def run_process(command: str, tag: str, args: argparse.Namespace, body: Callable[[RunConfig], None],
                overrides: dict | None = None) -> int:
    """`overrides` win over flags and files (a worker's peer count is the launcher's world size)."""
    bound_heap()  # node.heap: few arenas (ZeroMQ's threads)
    dump_stacks_on_sigusr1()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {tag} %(levelname)s %(message)s")
    try:
        cfg = resolve(args, **(overrides or {}))
        make_out_dir(cfg)
        torch.set_num_threads(max(1, cfg.threads or 1))
        body(cfg)
    except (ConfigError, FileNotFoundError, SecurityError, TopologyError, CheckpointError) as e:
        print(f"declora {command}: error: {e}", file=sys.stderr)
        return 2
    return 0
