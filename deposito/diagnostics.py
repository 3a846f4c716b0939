"""Where a process is stuck: SIGUSR2 writes the stack of every thread.

``kill -USR2 <pid>`` appends every thread's Python stack to ``stacks.txt``
in the process's data folder. The dump is written from the signal handler
in C (:mod:`faulthandler`), so it works even when the reactor is blocked,
and the process goes on serving. (twistd takes SIGUSR1 to reopen its log.)
"""

from __future__ import annotations

import faulthandler
import os
import signal
from typing import IO

_kept: list[IO[str]] = []  # the open file: faulthandler writes to its descriptor later


def stacks_on_signal(data: str, signum: int = getattr(signal, "SIGUSR2", 0)) -> str | None:
    """Dump every thread's stack to ``data``/stacks.txt on ``signum``; its
    path, or None where the system has no such signal."""
    if not signum or not hasattr(faulthandler, "register"):
        return None
    os.makedirs(data, exist_ok=True)
    path = os.path.join(data, "stacks.txt")
    out = open(path, "a")
    _kept.append(out)
    faulthandler.register(signum, file=out, all_threads=True, chain=False)
    return path
