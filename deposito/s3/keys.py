"""S3 credentials: the proxy's ``--s3-keys FILE``.

One ``<access-key-id> <secret-access-key>`` per line; blank lines and lines
starting with ``#`` are skipped. The secret never leaves the proxy: requests
prove they hold it by their Signature Version 4 signature.
"""

from __future__ import annotations

import secrets
import string

# The characters of an AWS access key ID and of a secret access key; the
# lengths are AWS's (20 and 40), so that tools which check them are content.
_KEY_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
KEY_ID_LENGTH = 20
SECRET_LENGTH = 40


class S3Keys:
    """Access key IDs and their secrets."""

    def __init__(self, pairs: dict[str, str], path: str | None = None) -> None:
        self._secrets = dict(pairs)
        self.path = path  # the file they were read from, read again on SIGHUP (see deposito.hangup)

    @classmethod
    def from_file(cls, path: str) -> S3Keys:
        """ValueError naming the file and line for a malformed line, a repeated key, or no key at all."""
        pairs: dict[str, str] = {}
        with open(path, encoding="utf-8-sig") as f:  # (a byte order mark first, as some editors write, is skipped)
            for number, line in enumerate(f, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                fields = text.split()
                if len(fields) != 2:
                    raise ValueError(f"{path}:{number}: expected '<access-key-id> <secret-access-key>'")
                if not (text.isascii() and all(field.isprintable() for field in fields)):
                    raise ValueError(f"{path}:{number}: a key is printable ASCII only (S3 tools send nothing else)")
                key_id, secret = fields
                if key_id in pairs:
                    raise ValueError(f"{path}:{number}: access key {key_id} given twice")
                pairs[key_id] = secret
        if not pairs:
            raise ValueError(f"{path} holds no S3 key")
        return cls(pairs, path)

    def read_again(self) -> int:
        """The file read again (see :mod:`deposito.hangup`); how many keys now."""
        assert self.path is not None
        self._secrets = S3Keys.from_file(self.path)._secrets
        return len(self._secrets)

    def secret(self, access_key: str) -> str | None:
        return self._secrets.get(access_key)

    def __len__(self) -> int:
        return len(self._secrets)


def new_key_pair() -> tuple[str, str]:
    """A random access key ID and secret, shaped like AWS's."""
    key_id = "DK" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH - 2))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return key_id, secret
