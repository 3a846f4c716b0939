"""SIGHUP: a proxy reads its ``--tokens`` and ``--s3-keys`` files again.

``kill -HUP <pid>`` changes who may come in without a restart: a key or a
token added, a leaked one taken out. Each file is read whole and checked
as at start; the new set replaces the old at once (a connection already
past AUTH, and a request already admitted, go on). A file that fails (gone, malformed) is said in the log,
and the set read before stays. A storage server has no such file: it says
so and goes on. SIGHUP stops neither process (SIGTERM does).
"""

from __future__ import annotations

import signal
from typing import Any, Optional, Protocol, Sequence

from twisted.logger import Logger

log = Logger()


class Rereadable(Protocol):
    def read_again(self) -> int:
        """Read the file again and hold what it says; how many entries
        now. Raises (OSError, ValueError, UnicodeDecodeError) as at start,
        and then holds what it held."""


def reread(files: Sequence[tuple[str, Optional[Rereadable]]]) -> None:
    """Read each file of ``files`` (its option, what holds it) again."""
    given = [(option, held) for option, held in files if held is not None]
    if not given:
        log.info("SIGHUP: no file to read again (a proxy reads its --tokens and --s3-keys again); going on")
    for option, held in given:
        try:
            count = held.read_again()
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.error("SIGHUP: {option} not read again, the ones read before stay: {error}", option=option, error=e)
        else:
            log.info("SIGHUP: {option} read again: {count} now", option=option, count=count)


def reread_on_hangup(reactor: Any, files: Sequence[tuple[str, Optional[Rereadable]]]) -> None:
    """From now on SIGHUP runs :func:`reread` on the reactor's thread."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None:
        signal.signal(hangup, lambda signum, frame: reactor.callFromThread(reread, files))
