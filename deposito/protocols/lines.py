"""The line framing every Deposito connection shares.

Lines end with LF; a trailing CR is dropped, so telnet's CRLF works too.
Replies are sent with CRLF. A line over the limit is refused, not buffered.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from twisted.protocols.basic import LineReceiver

from deposito import twisted_internals
from deposito.errors import BadArgs, BadCommand
from deposito.twisted_internals import IStreamTransport

MAX_LINE = 8192
STREAM_READ = 256 << 10  # bytes asked of the socket per read
STREAM_SEND = 1 << 20  # bytes handed to the socket per send


def tune_for_streams(transport: Any) -> None:
    """Read 256 KiB and send up to 1 MiB per call (Twisted's default is
    64 KiB for both): fewer calls per byte on the hot path, and reads small
    enough that a process's buffers stay a few MiB. A producer is paused
    once more than STREAM_READ waits to be sent."""
    twisted_internals.set_read_size(transport, STREAM_READ)
    twisted_internals.set_send_limit(transport, STREAM_SEND)
    if hasattr(transport, "setTcpNoDelay"):
        try:
            transport.setTcpNoDelay(True)
        except OSError:  # not TCP
            pass


class LineProtocol(LineReceiver):
    """LineReceiver that splits on LF, strips CR and decodes UTF-8."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE + 1  # the line and the CR that may end it
    transport: IStreamTransport  # set by makeConnection before any line arrives

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE:  # MAX_LENGTH leaves room for a CR that is not there
            self.lineLengthExceeded(line)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.badLine("request is not valid UTF-8")
            return
        self.textReceived(text)

    def textReceived(self, text: str) -> None:
        raise NotImplementedError

    def badLine(self, why: str) -> None:
        """A line that cannot be read: refuse it and close (the stream cannot be trusted)."""
        self.reply(BadArgs(why).reply())
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.badLine("line too long")

    def reply(self, text: str, *body: bytes) -> None:
        """Send the line ``text``, and ``body`` after it, in one send at once
        when nothing written before waits (else after it, as Twisted sends)."""
        twisted_internals.write_now(self.transport, text.encode("utf-8") + b"\r\n", *body)


def send_now(transport: Any) -> None:
    """Hand what ``transport`` holds to the kernel now rather than on the
    reactor's next turn, which saves that turn and two changes to its poll
    set per reply. Call it once a piece of work is done, so that all it wrote
    goes in one send. Only a plain TCP transport that is open and not
    closing; anything it could not send is left to the reactor as before, and
    so is an error (the transport stays registered for writing, and the
    reactor meets the error again and closes the connection)."""
    twisted_internals.flush_now(transport)


def handler_for(obj: Any, words: list[str]) -> Callable[..., Any]:
    """The ``do_<COMMAND>`` method of ``obj`` for a request, its arguments checked.

    Raises BadCommand for an unknown command and BadArgs for a wrong count.
    """
    command = words[0].upper()  # ASCII letters alone: "ſtat".upper() is "STAT"
    handler = getattr(obj, "do_" + command, None) if words[0].isascii() and command.isalpha() else None
    if handler is None:
        hint = " (try HELP)" if hasattr(obj, "do_HELP") else ""
        raise BadCommand(f"unknown command {words[0][:40]!r}{hint}")
    low, high = _arity(handler.__func__)
    if not low <= len(words) - 1 <= high:
        usage = getattr(obj, "USAGE", {}).get(command, command)
        raise BadArgs(f"usage: {usage}")
    return handler


@functools.lru_cache(maxsize=None)
def _arity(function: Callable[..., Any]) -> tuple[int | float, int | float]:
    """How few and how many words a ``do_`` method takes after its command."""
    low: int = 0
    high: int | float = 0
    for p in list(inspect.signature(function).parameters.values())[1:]:  # after self
        if p.kind is p.VAR_POSITIONAL:
            high = float("inf")
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            low += p.default is p.empty
    return low, high
