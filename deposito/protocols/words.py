"""Words of a request or reply line: splitting, quoting and ``key=value`` fields.

A word containing spaces, quotes, backslashes or nothing at all is written in
double quotes with ``\\"`` and ``\\\\`` escapes, so any name survives a line.
"""

from __future__ import annotations

import base64
import re

from deposito.errors import BadArgs
from deposito.hidden import hidden_name

_NEEDS_QUOTES = re.compile(r'[\s"\\=]')
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

MAX_NAME_BYTES = 1024


def quote(word: str) -> str:
    """Write ``word`` so that :func:`split` gives it back whole."""
    if word and not _NEEDS_QUOTES.search(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split(line: str) -> list[str]:
    """Split a request line into words, honouring double quotes.

    Raises BadArgs on an unterminated quote or a bad escape.
    """
    if '"' not in line:  # no quoted word: the common case, and much faster
        return [word for word in line.replace("\t", " ").split(" ") if word]
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == " " or line[i] == "\t":
            i += 1
            continue
        if line[i] == '"':
            i += 1
            out = []
            while True:
                if i >= n:
                    raise BadArgs("unterminated quote")
                c = line[i]
                if c == "\\":
                    if i + 1 >= n or line[i + 1] not in '"\\':
                        raise BadArgs('bad escape: only \\" and \\\\ are allowed')
                    out.append(line[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    out.append(c)
                    i += 1
            if i < n and line[i] not in " \t":
                raise BadArgs("a quoted word must be followed by a space")
            words.append("".join(out))
        else:
            j = i
            while j < n and line[j] not in " \t":
                if line[j] == '"':
                    raise BadArgs("a quote may only start a word")
                j += 1
            words.append(line[i:j])
            i = j
    return words


def check_name(name: str) -> str:
    """A valid file name, or BadArgs: 1 to 1024 bytes of UTF-8, no control characters."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise BadArgs("empty name")
    if size > MAX_NAME_BYTES:
        raise BadArgs(f"name longer than {MAX_NAME_BYTES} bytes")
    if _CONTROL.search(name):
        raise BadArgs("control character in name")
    if _SURROGATE.search(name):
        raise BadArgs("name is not valid UTF-8")
    return name


def check_bound(text: str, what: str) -> str:
    """A listing's prefix or marker: no name holds a control character, so
    none may be asked for either (BadArgs, the same on every catalog)."""
    if _CONTROL.search(text):
        raise BadArgs(f"control character in {what}")
    return text


def check_stored_name(name: str) -> str:
    """A name a blob may be stored under: a file's name, or one of the
    hidden names of a version's parts (see deposito.hidden); else BadArgs."""
    return name if hidden_name(name) is not None else check_name(name)


MAX_META_BYTES = 3072  # a version's gateway metadata, as it rides on the blob wire (see meta_word)


def meta_word(meta: str) -> str:
    """A version's gateway metadata as one word of a line (``meta=`` and
    URL-safe base64): empty when there is none."""
    if not meta:
        return ""
    return "meta=" + base64.urlsafe_b64encode(meta.encode("utf-8")).decode("ascii").rstrip("=")


def parse_meta_word(word: str) -> str:
    """The metadata a :func:`meta_word` carries; BadArgs for anything else or more than MAX_META_BYTES."""
    if not word.startswith("meta=") or len(word) > 5 + (MAX_META_BYTES * 4 + 2) // 3:
        raise BadArgs("expected meta=<base64> of at most %d bytes" % MAX_META_BYTES)
    text = word[5:]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise BadArgs("meta= is not base64 of UTF-8") from None


MAX_COUNT = (1 << 63) - 1  # the largest number a catalog column holds (PostgreSQL's BIGINT)


def digits(text: str, most: int = 20) -> bool:
    """Whether ``text`` is a whole number in ASCII digits (str.isdigit alone
    takes "²" or "٣", which int() refuses or reads), ``most`` of them at most."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def parse_count(word: str, what: str, low: int = 0, high: int | None = None) -> int:
    """A decimal whole number within bounds, or BadArgs naming ``what``
    (a number bound for the catalog: ``high`` at most MAX_COUNT)."""
    if not digits(word):
        if digits(word, most=len(word)):
            raise BadArgs(f"{what} is too large: {word[:30]}{'...' if len(word) > 30 else ''}")
        raise BadArgs(f"{what} must be a whole number, not {word!r}")
    value = int(word)
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f"at least {low}"
        raise BadArgs(f"{what} must be {bounds}")
    return value


def fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of a reply line, values unquoted."""
    out = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            value = split(value)[0]
        out[key] = value
    return out
