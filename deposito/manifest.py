"""A multipart upload's manifest: the blob, stored beside its parts under
the upload's hidden name (see :mod:`deposito.hidden`) and replicated like
its object, that says which parts make the object, in order. The catalog
holds the same; the manifest is what a rebuild of a lost catalog reads to
make the object again from the servers' blobs (its metadata carries the
object's version).

Text, UTF-8: the line ``deposito-manifest 1``, then one JSON object
``{"name": ..., "meta": ..., "sha256": ...}`` (the object's name, its
gateway metadata and its whole SHA-256), then one JSON array per part, in
order: ``[hidden name, size, sha256]``.
"""

from __future__ import annotations

import json
import re

import attrs

from deposito.hidden import hidden_name

HEADER = b"deposito-manifest 1\n"
MAX_PARTS = 10000
MAX_BYTES = 4 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class BadManifest(ValueError):
    pass


@attrs.frozen
class Manifest:
    name: str
    meta: str
    sha256: str
    parts: list[tuple[str, int, str]]  # (hidden name, size, sha256) each, in order

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.parts)


def write(name: str, meta: str, sha256: str, parts: list[tuple[str, int, str]]) -> bytes:
    lines = [json.dumps({"name": name, "meta": meta, "sha256": sha256}, ensure_ascii=False)]
    lines += [json.dumps([part, size, sha256]) for part, size, sha256 in parts]
    return HEADER + "\n".join(lines).encode("utf-8") + b"\n"


def read(text: bytes) -> Manifest:
    """The manifest these bytes hold; BadManifest when they hold none."""
    if len(text) > MAX_BYTES or not text.startswith(HEADER):
        raise BadManifest("not a manifest")
    try:
        # (lines end in \n alone: a name or metadata may hold U+2028, which splitlines would cut at)
        head, *rest = text[len(HEADER):].decode("utf-8").removesuffix("\n").split("\n")
        obj = json.loads(head)
        name, meta, sha256 = obj["name"], obj["meta"], obj["sha256"]
        parts = [(str(p), int(s), str(h)) for p, s, h in map(json.loads, rest)]
    except (ValueError, KeyError, TypeError) as e:
        raise BadManifest(f"not a manifest: {e}") from None
    if not isinstance(name, str) or not isinstance(meta, str) or not isinstance(sha256, str) \
            or not _SHA256.match(sha256) or len(parts) > MAX_PARTS or any(
            hidden_name(p) is None or size < 0 or not _SHA256.match(h) for p, size, h in parts):
        raise BadManifest("not a manifest: bad fields")
    return Manifest(name, meta, sha256, parts)
