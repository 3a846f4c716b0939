"""The cluster secret: mutual proofs with HMAC-SHA256 over fresh nonces.

Each side sends a random nonce and proves it holds the secret by an HMAC over
both nonces and its own role; the secret itself never crosses the wire, a
proof cannot be replayed (the other side's nonce is new each time), and one
side's proof is no answer for the other (the role is part of it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def load_secret(path: str) -> bytes:
    """The file's content with surrounding whitespace stripped; ValueError when empty."""
    with open(path, "rb") as f:
        value = f.read().strip()
    if not value:
        raise ValueError(f"{path} is empty")
    return value


def nonce() -> str:
    return secrets.token_hex(16)


def proof(secret: bytes, role: str, *parts: str) -> str:
    return hmac.new(secret, "|".join((role, *parts)).encode("utf-8"), hashlib.sha256).hexdigest()


def verify(secret: bytes, given: str, role: str, *parts: str) -> bool:
    return hmac.compare_digest(given.encode("ascii", "replace"), proof(secret, role, *parts).encode("ascii"))
