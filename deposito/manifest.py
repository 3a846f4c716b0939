"""A multipart upload's manifest: the blob, stored beside its parts under
the upload's hidden name (see :mod:`deposito.hidden`) and replicated like
its object, that says which parts make the object, in order. The catalog
holds the same; the manifest is what a rebuild of a lost catalog reads to
make the object again from the servers' blobs (its metadata carries the
object's version).

Text, UTF-8: the line ``deposito-manifest 1``, then one JSON object
``{"name": ..., "meta": ...}``, then one JSON array per part, in order:
``[hidden name, size, sha256]``.
"""

from __future__ import annotations

import json
import re

from deposito.hidden import hidden_name

HEADER = b"deposito-manifest 1\n"
MAX_PARTS = 10000
MAX_BYTES = 4 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class BadManifest(ValueError):
    pass


def write(name: str, meta: str, parts: list[tuple[str, int, str]]) -> bytes:
    lines = [json.dumps({"name": name, "meta": meta}, ensure_ascii=False)]
    lines += [json.dumps([part, size, sha256]) for part, size, sha256 in parts]
    return HEADER + "\n".join(lines).encode("utf-8") + b"\n"


def read(text: bytes) -> tuple[str, str, list[tuple[str, int, str]]]:
    """(name, meta, parts) of a manifest; BadManifest when it is not one."""
    if len(text) > MAX_BYTES or not text.startswith(HEADER):
        raise BadManifest("not a manifest")
    try:
        head, *rest = text[len(HEADER):].decode("utf-8").splitlines()
        obj = json.loads(head)
        name, meta = obj["name"], obj["meta"]
        parts = [(str(p), int(s), str(h)) for p, s, h in map(json.loads, rest)]
    except (ValueError, KeyError, TypeError) as e:
        raise BadManifest(f"not a manifest: {e}") from None
    if not isinstance(name, str) or not isinstance(meta, str) or len(parts) > MAX_PARTS or any(
            hidden_name(p) is None or size < 0 or not _SHA256.match(h) for p, size, h in parts):
        raise BadManifest("not a manifest: bad fields")
    return name, meta, parts
