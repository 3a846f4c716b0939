"""One exception class per ERR code of the text protocol.

The proxy raises them to answer a request; the clients raise them when the
proxy answers with ``ERR <code> <message>``.
"""

from __future__ import annotations


class DepositoError(Exception):
    """An ``ERR`` reply: ``code`` is the protocol's word, ``message`` is for a person."""

    code = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def reply(self) -> str:
        """The reply line, without its line ending."""
        return f"ERR {self.code} {self.message}".rstrip()


class BadCommand(DepositoError):
    code = "badcommand"


class BadArgs(DepositoError):
    code = "badargs"


class NotFound(DepositoError):
    code = "notfound"


class Unavailable(DepositoError):
    code = "unavailable"


class OutOfReach(Unavailable):
    """The catalog's database could not be reached (or answer): a change
    sent meanwhile may have been made, or not."""


class NoSpace(DepositoError):
    code = "nospace"


class TooLarge(DepositoError):
    code = "toolarge"


class Denied(DepositoError):
    code = "denied"


class Internal(DepositoError):
    code = "internal"


class NotEmpty(DepositoError):
    """A bucket that still holds files (the S3 gateway's BucketNotEmpty; no text command meets it)."""

    code = "notempty"


class Precondition(DepositoError):
    """A conditional write whose condition on the current version does not
    hold (the S3 gateway's PreconditionFailed; no text command meets it)."""

    code = "precondition"


class NoVersion(Precondition):
    """A conditional write that needs a current version where there is none (S3's NoSuchKey)."""


class Conflict(Precondition):
    """A conditional write overtaken by another write of its name, committed
    while it was under way (S3's ConditionalRequestConflict: try again)."""


ERRORS: dict[str, type[DepositoError]] = {
    cls.code: cls
    for cls in (BadCommand, BadArgs, NotFound, Unavailable, NoSpace, TooLarge, Denied, Internal)
}


def from_reply(line: str) -> DepositoError:
    """The exception for an ``ERR <code> <message>`` line (unknown codes map to Internal)."""
    parts = line.split(" ", 2)
    code = parts[1] if len(parts) > 1 else "internal"
    message = parts[2] if len(parts) > 2 else ""
    return ERRORS.get(code, Internal)(message)
