"""The line framing every Deposito connection shares.

Lines end with LF; a trailing CR is dropped, so telnet's CRLF works too.
Replies are sent with CRLF. A line over the limit is refused, not buffered.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from twisted.protocols.basic import LineReceiver

from deposito.errors import BadArgs, BadCommand

MAX_LINE = 8192
STREAM_READ = 256 << 10  # bytes asked of the socket per read
STREAM_SEND = 1 << 20  # bytes handed to the socket per send


def tune_for_streams(transport: Any) -> None:
    """Read 256 KiB and send up to 1 MiB per call (Twisted's default is
    64 KiB for both): fewer calls per byte on the hot path, and reads small
    enough that a process's buffers stay a few MiB. A producer is paused
    once more than STREAM_READ waits to be sent."""
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = STREAM_READ
        transport.SEND_LIMIT = STREAM_SEND
    if hasattr(transport, "setTcpNoDelay"):
        try:
            transport.setTcpNoDelay(True)
        except OSError:  # not TCP
            pass


class LineProtocol(LineReceiver):
    """LineReceiver that splits on LF, strips CR and decodes UTF-8."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE + 1  # the line and the CR that may end it

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
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

    def reply(self, text: str) -> None:
        self.transport.write(text.encode("utf-8") + b"\r\n")


def handler_for(obj: Any, words: list[str]) -> Callable[..., Any]:
    """The ``do_<COMMAND>`` method of ``obj`` for a request, its arguments checked.

    Raises BadCommand for an unknown command and BadArgs for a wrong count.
    """
    command = words[0].upper()
    handler = getattr(obj, "do_" + command, None) if command.isalpha() else None
    if handler is None:
        raise BadCommand(f"unknown command {words[0][:40]!r} (try HELP)")
    try:
        _signature(handler.__func__).bind(None, *words[1:])
    except TypeError:
        usage = getattr(obj, "USAGE", {}).get(command, command)
        raise BadArgs(f"usage: {usage}") from None
    return handler


@functools.lru_cache(maxsize=None)
def _signature(function: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(function)
