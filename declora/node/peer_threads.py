"""Run peers (and a server) of one process on threads of their own, wait for all, and fail with the first error:
what an in-process run and a process of several peers have in common."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("declora.node.peer_threads")


def run_on_threads(jobs: dict[int, tuple[Callable, tuple]], what: str) -> None:
    """Run `fn(*args)` for every id -> (fn, args) on a thread named declora-peer-<id>; raise RuntimeError naming the
    lowest failed id once all have ended (one peer's failure does not cut the others short)."""
    errors: dict[int, BaseException] = {}

    def run(i: int, fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported below, with the others
            log.exception("peer %d failed", i)
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, fn, args), name=f"declora-peer-{i}")
               for i, (fn, args) in jobs.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        first = min(errors)
        raise RuntimeError(f"{len(errors)} of {len(jobs)} {what} failed; peer {first}: {errors[first]!r}") \
            from errors[first]
