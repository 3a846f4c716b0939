"""Validation shared by the tap modules' options."""

from __future__ import annotations

import os
import re

from twisted.python import usage

_SIZE = re.compile(r"^(\d+)\s*([kmgt]i?b?|b)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(option: str, value: str) -> int:
    """``1048576``, ``512M``, ``10GiB``... as a whole number of bytes, 1 or more
    (a limit of none would refuse every file, or hold none)."""
    m = _SIZE.match(value.strip())
    if not m:
        raise usage.UsageError(f"{option} must be a byte count such as 1048576, 512M or 10G, not {value!r}")
    n = int(m.group(1)) * _UNITS[(m.group(2) or "")[:1].lower()]
    if n < 1:
        raise usage.UsageError(f"{option} must be 1 byte or more, not {value!r}")
    return n


def parse_int(option: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise usage.UsageError(f"{option} must be a whole number, not {value!r}") from None
    if not low <= n <= high:
        raise usage.UsageError(f"{option} must be from {low} to {high}, not {n}")
    return n


def parse_seconds(option: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise usage.UsageError(f"{option} must be a number of seconds, not {value!r}") from None
    if not 0.1 <= seconds <= 10 * 365 * 86400:
        raise usage.UsageError(f"{option} must be from 0.1 seconds to ten years, not {value}")
    return seconds


def read_secret(option: str, path: str) -> bytes:
    from deposito.secret import load_secret

    try:
        return load_secret(path)
    except (OSError, ValueError) as e:
        raise usage.UsageError(f"{option}: {e}") from None


def parse_catalog(option: str, value: str) -> str:
    """``sqlite:`` or a PostgreSQL URL (``postgresql://USER@HOST:PORT/DB``, any libpq URL)."""
    if value in ("sqlite:", "sqlite"):
        return "sqlite:"
    from deposito.catalog.postgres import check_url

    try:
        return check_url(value)
    except ValueError as e:
        raise usage.UsageError(f"{option} must be sqlite: or a postgresql:// URL: {e}") from None


def data_directory(option: str, path: str) -> str:
    """``path`` made absolute, created if missing, and checked to be a
    directory this process may write in."""
    if not path:
        raise usage.UsageError(f"{option} must name a directory")
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise usage.UsageError(f"{option}: cannot make directory {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise usage.UsageError(f"{option}: cannot write in {path}")
    return path


def check_endpoint(option: str, value: str, parse, client: bool = False) -> None:
    """Refuse an endpoint string the endpoint parser cannot read, and a
    client's TCP port no socket can have (a server's is refused as it listens)."""
    try:
        parse(value)
    except Exception as e:  # the parsers raise a range of types
        raise usage.UsageError(f"{option}: bad endpoint {value!r}: {e}") from None
    port = _tcp_port(value) if client else None
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise usage.UsageError(f"{option}: bad endpoint {value!r}: its port must be 1 to 65535")


def _tcp_port(value: str) -> str | None:
    """The port a client's tcp:, tls: or ssl: endpoint string names
    (``tcp:HOST:PORT``, or ``port=PORT``); None for other kinds."""
    kind, _, rest = value.partition(":")
    if kind not in ("tcp", "tls", "ssl"):
        return None
    fields = re.split(r"(?<!\\):", rest)  # a colon escaped with a backslash is part of its field
    for field in fields:
        if field.startswith("port="):
            return field[len("port="):]
    positional = [field for field in fields if "=" not in field]
    return positional[1] if len(positional) > 1 else None


class FirstLineOptions(usage.Options):
    """Options whose errors name the offending option on the first line of stderr.

    twistd prints its whole usage text before an error; a person (and a
    script) wants the error first.
    """

    command = "deposito"

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"{self.command}: error: {e}\n(see twistd {self.command} --help)") from None
