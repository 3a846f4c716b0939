"""Client tokens: the proxy's ``--tokens FILE``, one token per line."""

from __future__ import annotations

import hmac


class Tokens:
    """The tokens a client may AUTH with (compared in constant time)."""

    def __init__(self, tokens: list[str], path: str | None = None) -> None:
        self._tokens = [t.encode("utf-8") for t in tokens]
        self.path = path  # the file they were read from, read again on SIGHUP (see deposito.hangup)

    @classmethod
    def from_file(cls, path: str) -> Tokens:
        """Blank lines and lines starting with ``#`` are skipped; ValueError when none is left."""
        with open(path, encoding="utf-8-sig") as f:  # (a byte order mark first, as some editors write, is skipped)
            tokens = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not tokens:
            raise ValueError(f"{path} holds no token")
        return cls(tokens, path)

    def read_again(self) -> int:
        """The file read again (see :mod:`deposito.hangup`); how many tokens now."""
        assert self.path is not None
        self._tokens = Tokens.from_file(self.path)._tokens
        return len(self._tokens)

    def check(self, token: str) -> bool:
        given = token.encode("utf-8")
        ok = False
        for t in self._tokens:  # every one compared, whatever matches
            ok |= hmac.compare_digest(given, t)
        return ok
