"""The seams between the proxy's parts: what each needs of the others.

Tests replace these with fakes, which declare the interface and are checked
against it with ``zope.interface.verify.verifyObject``.
"""

from __future__ import annotations

from zope.interface import Interface


class IWorkCatalog(Interface):
    """What the reconciler needs of the catalog: its queue of files to look
    at, their records, and the moves it makes. Every method returns a
    Deferred; the work runs off the reactor thread."""

    def due_work(now: float, limit: int) -> object:
        """The next queued ``(name, generation, rank)`` due by ``now``, most urgent first."""

    def next_due() -> object:
        """When the next queued file falls due (None: the queue is empty)."""

    def records(names: list) -> object:
        """The current FileRecord of each name (None for a name gone)."""

    def records_after(after: str, limit: int) -> object:
        """The next ``limit`` FileRecords in name order after ``after``."""

    def settle(outcomes: list) -> object:
        """Record a :class:`deposito.catalog.Outcome` for each file looked at."""

    def enqueue(names: list, due: float, only_new: bool) -> object:
        """Queue files to be looked at from ``due`` on (``only_new``: leave
        those already queued as they are)."""

    def enqueue_server(server: str, after: str, limit: int) -> object:
        """Queue a page of the files with a copy on ``server``; fires with
        the blob id to go on from, or None at the end."""

    def wake(now: float) -> object:
        """Make every queued file waiting for later due now."""

    def lookup(name: str) -> object:
        """The FileRecord of ``name``, or None."""

    def busy(blob: str) -> object:
        """Servers where ``blob`` is being written or deleted."""

    def add_copy(name: str, blob: str, server: str, now: float) -> object:
        """Count a new copy; fires False when the blob is no longer current."""

    def abandon_copy(blob: str, server: str) -> object:
        """A copy that failed is garbage."""

    def drop_copies(drops: list) -> object:
        """Stop counting these ``(blob, server)`` copies and delete them."""


class ICopier(Interface):
    """Makes one more copy of a file's blob (the proxy's data path)."""

    def copy_to_new_server(record: object, sources: list, taken: list) -> object:
        """A coroutine or Deferred firing with the Member that now holds a
        new copy; raises CopyFailed, Unavailable or NoSpace."""
