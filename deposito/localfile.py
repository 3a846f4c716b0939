"""A client's own files: what a PUT reads from, and where a GET writes so
that the destination never holds part of a file."""

from __future__ import annotations

import os
import secrets
from typing import IO, Any, Optional, Protocol, Union

#: What a PUT reads: a path, or a binary file object.
Source = Union[str, "os.PathLike[str]", IO[bytes]]


class Writable(Protocol):
    """Where a GET's bytes may be written: a binary file object, an
    :class:`AsideFile`, anything with ``write``."""

    def write(self, data: bytes, /) -> object: ...


#: Where a GET writes: a path (through an :class:`AsideFile`), or a Writable.
Sink = Union[str, "os.PathLike[str]", Writable]


def open_source(source: Source, size: Optional[int] = None) -> tuple[IO[bytes], int, bool]:
    """The file to read, how many bytes to send, and whether the caller must close it.

    A path is opened; a file object is read from its current position to its
    end, which needs a seekable file unless ``size`` is given.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        f = open(source, "rb")
        try:
            return f, (os.fstat(f.fileno()).st_size if size is None else size), True
        except BaseException:
            f.close()
            raise
    if size is None:
        try:
            here = source.tell()
            end = source.seek(0, os.SEEK_END)
            source.seek(here)
        except (OSError, AttributeError, ValueError) as e:
            raise ValueError("a file that cannot seek needs size=; or spool it to a temporary file") from e
        size = end - here
    return source, size, False


class AsideFile:
    """A file written beside its destination and put in place only when complete.

    Bytes go to a hidden temporary file in the destination's folder (created
    with the usual permissions); :meth:`commit` flushes it to disk and renames
    it onto ``path``, :meth:`discard` removes it. So the destination holds
    either its old content or the whole new file, never a part.
    With ``overwrite=False``, :meth:`commit` raises FileExistsError rather
    than replace a file that exists (checked atomically where links work).
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], overwrite: bool = True) -> None:
        self.path = os.fspath(path)
        self.overwrite = overwrite
        folder, base = os.path.split(os.path.abspath(self.path))
        while True:
            short = base
            while len(os.fsencode(short)) > 200:  # within NAME_MAX, which counts bytes; cut at a character
                short = short[:-1]
            self.temp = os.path.join(folder, f".{short}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def restart(self) -> None:
        """Drop what was written so far and start again from the first byte:
        a download cut off can be made again into the same file."""
        self.file.seek(0)
        self.file.truncate()

    def commit(self) -> None:
        """Make the written bytes durable and put them at ``path``."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.overwrite:
                os.replace(self.temp, self.path)
            else:
                try:
                    os.link(self.temp, self.path)
                except FileExistsError:
                    raise
                except OSError:  # no hard links here: best effort
                    if os.path.lexists(self.path):
                        raise FileExistsError(17, "File exists", self.path) from None
                    os.replace(self.temp, self.path)
                    return
                os.unlink(self.temp)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Drop the written bytes; the destination is untouched."""
        self.file.close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AsideFile:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

