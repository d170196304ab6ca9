"""`kill -USR1 PID` on a launcher, peer, group or server process prints every thread's Python stack to its stderr
(a peer's log file) and the process carries on: the way to see where a run that looks stuck is waiting."""
from __future__ import annotations

import faulthandler
import signal
import sys


def dump_stacks_on_sigusr1() -> None:
    if not hasattr(signal, "SIGUSR1"):  # not on Windows
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (OSError, ValueError, AttributeError):  # stderr is no real file (captured, embedded): no dumps, no harm
        pass
