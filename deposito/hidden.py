"""Hidden names: the files a version made of parts (an S3 multipart upload)
is stored as.

A version may be a sequence of blobs. Each part is then a file of its own
under a hidden name, replicated, repaired, scrubbed and collected as any
file is; the object's row points to them (``FileRecord.parts``, the upload's
id) and holds no blob of its own. Hidden names start with a control
character, which no client's name may hold (``words.check_name``), so they
sort before every visible name and no listing shows them:

- ``HIDDEN + upload``: the upload's manifest (see :mod:`deposito.manifest`);
- ``HIDDEN + upload + "/nnnnn/" + token``: part nnnnn (each upload of a part
  has a token of its own, so two uploads of part 5 are two files).
"""

from __future__ import annotations

import re

HIDDEN = "\x01"
VISIBLE = " "  # every visible name sorts at or after this
_NAME = re.compile("\x01([0-9a-f]{32})(?:/([0-9]{5})/[0-9a-f]{32})?\\Z")


def manifest_name(upload: str) -> str:
    return HIDDEN + upload


def part_name(upload: str, number: int, token: str) -> str:
    return f"{HIDDEN}{upload}/{number:05d}/{token}"


def pointer_blob(upload: str) -> str:
    """The blob id a version made of parts is recorded with: none is stored under it."""
    return "parts-" + upload


def parts_range(upload: str) -> tuple[str, str]:
    """An upload's part names lie strictly between these two."""
    return HIDDEN + upload + "/", HIDDEN + upload + "0"  # "0" follows "/"


def hidden_name(name: str) -> tuple[str, int] | None:
    """(upload, part number) of a hidden name (0 for the manifest), None for any other name."""
    match = _NAME.match(name)
    return (match.group(1), int(match.group(2) or 0)) if match else None
