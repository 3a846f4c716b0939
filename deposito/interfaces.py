"""The seams between Deposito's parts: what each needs of the others.

- :class:`ICatalog`: what the proxy needs of a catalog backend (SQLite
  today, PostgreSQL next); :class:`IWorkCatalog` is the reconciler's part of it;
- :class:`IDepot`: what the gateways (text protocol, HTTP, S3) call;
- :class:`IDevice`: a storage server's device, as its protocols see it;
- :class:`ICopier`: how the reconciler makes a copy.

Tests replace these with fakes, which declare the interface and are checked
against it with ``zope.interface.verify.verifyObject``.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from deposito.blobmeta import BlobMeta
    from deposito.blobstore import IncomingBlob
    from deposito.catalog import Counts, FileRecord, Outcome
    from deposito.catalog.listing import Listing
    from deposito.catalog.operations import Beat
    from deposito.catalog.records import Expect
    from deposito.diskio import Reader
    from deposito.errors import DepositoError
    from deposito.roster import Member
    from deposito.transfer import Upload

    # A server as the catalog remembers it: (id, zone, host, port, capacity, used, blobs).
    ServerRow = tuple[str, str, str, int, int, int, int]
    # A blob a server holds, for a rebuild: (blob, version, size, sha256, replicas, name).
    Entry = tuple[str, int, int, str, int, str, str]


class IWorkCatalog(Interface):
    """What the reconciler needs of the catalog: its queue of files to look
    at, their records, and the moves it makes. Every method returns a
    Deferred; the work runs off the reactor thread."""

    def due_work(now: float, limit: int) -> Deferred[list[tuple[str, int, int]]]:
        """Claim the next queued ``(name, generation, rank)`` due by ``now``,
        most urgent first, that no other proxy has claimed."""

    def next_due() -> Deferred[Optional[float]]:
        """When the next unclaimed queued file falls due (None: none is queued)."""

    def release(names: list[str]) -> Deferred[None]:
        """Let go of claimed files whose copies are made."""

    def records(names: list[str]) -> Deferred[list[Optional[FileRecord]]]:
        """The current FileRecord of each name (None for a name gone)."""

    def records_after(after: str, limit: int) -> Deferred[list[FileRecord]]:
        """The next ``limit`` FileRecords in name order after ``after``."""

    def settle(outcomes: list[Outcome], held: list[str] = []) -> Deferred[None]:
        """Record a :class:`deposito.catalog.Outcome` for each file looked at,
        and let go of each but those ``held`` (copies are to be made)."""

    def enqueue(names: list[str], due: float = 0.0, only_new: bool = False) -> Deferred[None]:
        """Queue files to be looked at from ``due`` on (``only_new``: leave
        those already queued as they are)."""

    def enqueue_server(server: str, after: str, limit: int) -> Deferred[Optional[str]]:
        """Queue a page of the files with a copy on ``server``; fires with
        the blob id to go on from, or None at the end."""

    def wake(now: float) -> Deferred[int]:
        """Make every queued file waiting for later due now; fires with how many."""

    def lookup(name: str) -> Deferred[Optional[FileRecord]]:
        """The FileRecord of ``name``, or None."""

    def busy(blob: str) -> Deferred[list[str]]:
        """Servers where ``blob`` is being written or deleted."""

    def add_copy(name: str, blob: str, server: str, now: float) -> Deferred[bool]:
        """Count a new copy; fires False when the blob is no longer current."""

    def abandon_copy(blob: str, server: str) -> Deferred[None]:
        """A copy that failed is garbage."""

    def drop_copies(drops: list[tuple[str, str, int]]) -> Deferred[None]:
        """Stop counting these ``(blob, server, wanted)`` copies and delete
        them, unless their file wants more than ``wanted`` copies by now."""


class ICopier(Interface):
    """Makes one more copy of a file's blob (the proxy's data path)."""

    def copy_to_new_server(record: FileRecord, sources: list[Member], taken: list[Member],
                           rescue: bool = False) -> Awaitable[Member]:
        """Awaitable: the Member that now holds a new copy (added to
        ``taken``); raises CopyFailed, Unavailable or NoSpace. With
        ``rescue``, no copy is whole: it is made from the good blocks of the
        copies ``sources`` set aside as corrupt (deposito.transfer.rescue_blob)."""

    def keep_wanted(blob: str, count: int, holders: list[Member]) -> Awaitable[None]:
        """Awaitable: ``count`` kept as the wanted count with the copies of
        ``blob`` on ``holders`` (what a rebuild reads); raises when one of
        them could not keep it."""


class ICatalog(IWorkCatalog):
    """Everything the proxy needs of a catalog backend: the reconciler's
    view, and the writes, reads and counts behind PUT, GET, DELETE, LIST,
    REPLICAS, STATUS, the collector, inventories and rebuilding. Every
    method but :meth:`kept_record`, :meth:`start` and :meth:`stop` returns
    a Deferred; the work runs off the reactor thread, and a Deferred of a
    change fires once the change is durable (unless the method says
    otherwise: see :func:`deposito.catalog.effects`)."""

    reachable = Attribute("""Whether the database is answering: False once a call
        failed with Unavailable, till a change goes through again (a lookup
        that does is not enough). While it is False, a PUT waits for its
        version and is refused before its client sends any byte.""")

    def start() -> None:
        """Start the threads (or connections) the calls run on."""

    def stop() -> None:
        """Stop them and close the catalog."""

    # -- start-up and rebuilding

    def is_empty() -> Deferred[bool]:
        """True when no name was ever stored: a new catalog, or a lost one."""

    def recover(now: float) -> Deferred[int]:
        """This proxy starts and takes its place among the proxies; what a
        proxy before it left unfinished on a catalog no other shares is
        garbage now. Fires with how many copies that makes garbage."""

    def beat(up: list[str], now: float, lease: float, hand_over: bool, rebuilding: bool = False) -> Deferred[Beat]:
        """Renew this proxy's lease, say which servers it sees ``up`` and
        whether it is ``rebuilding`` the catalog on request, and
        (``hand_over``) retire proxies silent past ``lease``. Fires with the
        servers the other proxies saw lately (id, seconds since), how many
        proxies were retired and how many copies that made garbage, the ids
        of the other proxies sharing the catalog now, and whether one of
        them is rebuilding it on request."""

    def trust(until: float) -> None:
        """No other proxy shares the catalog until ``until`` (time.monotonic()):
        lookups may be answered from the records kept till then."""

    def seen_proxies(others: list[str], began: float) -> None:
        """A beat that began at ``began`` (time.monotonic()) found the other
        proxies ``others`` sharing the catalog (see :mod:`deposito.catalog.coherence`)."""

    def leave() -> Deferred[int]:
        """This proxy stops: its unfinished work passes to the others."""

    def adopt(server: str, entries: list[Entry], now: float) -> Deferred[int]:
        """Rebuilding: take a server's blobs in; the highest version of each
        name wins. Fires with how many copies were taken."""

    # -- the storage servers

    def servers() -> Deferred[list[ServerRow]]:
        """The servers known."""

    def identity() -> Deferred[str]:
        """The catalog's id (made with it): what servers check when they join."""

    def lost_catalogs() -> Deferred[list[str]]:
        """The ids of the lost catalogs this one was rebuilt from: a server
        back late that still serves one is taken in."""

    def adopting() -> Deferred[list[str]]:
        """The servers whose listing is being taken in."""

    def rebuild_owed() -> Deferred[bool]:
        """A rebuild was cut short (its proxy stopped): it goes on."""

    def mark_rebuilding(rebuilding: bool) -> Deferred[None]:
        """A rebuild is under way, or over (its multipart objects made again)."""

    def mark_adopting(server: str, adopting: bool) -> Deferred[None]:
        """``server``'s listing is being taken in, or (``adopting`` False) it is all in."""

    def succeed(lost: str, floor: int) -> Deferred[None]:
        """This catalog is rebuilt from servers of the lost catalog ``lost``;
        versions are given out from ``floor`` up from now on, above any the
        lost catalog gave out."""

    def raise_floor(floor: int) -> Deferred[None]:
        """Versions are given out from ``floor`` up from now on."""

    def save_server(id: str, zone: str, host: str, port: int, capacity: int, used: int,
                    blobs: int) -> Deferred[None]:
        """Remember a server across restarts."""

    # -- PUT

    def begin_upload(name: str, blob: str, servers: list[str]) -> Deferred[int]:
        """The next version of ``name``; the blob's writes on ``servers`` are intents."""

    def add_intent(blob: str, server: str) -> Deferred[None]:
        """One more server is being written with ``blob``."""

    def abandon(blob: str, name: Optional[str] = None, version: Optional[int] = None,
                servers: Optional[list[str]] = None) -> Deferred[None]:
        """An upload failed: what it wrote anywhere is garbage. With ``name``
        (whose ``version`` it was) and the ``servers`` written to: also
        where its intents were lost, unless it was committed after all."""

    def on_db_clock(t: float) -> float:
        """A time of the reactor's clock, as the catalog keeps it: on its
        database's clock, which every proxy sharing it agrees on (see
        deposito.catalog.changes.Changes._on_db_clock)."""

    def commit(name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
               servers: list[str], now: float, meta: str = "", expect: Optional[Expect] = None,
               bucket: Optional[str] = None) -> Deferred[bool]:
        """Make a version visible with its copies (and a gateway's ``meta``),
        in one transaction; fires False when a newer version was committed or
        deleted meanwhile (this one is garbage then, never seen by readers).
        With ``expect``, only if the name's current version meets it (see
        :data:`deposito.catalog.records.Expect`), else that error; with
        ``bucket`` (an S3 write), only while that bucket exists, else NotFound."""

    # -- multipart uploads (the S3 gateway's): parts are hidden files (see deposito.hidden)

    def create_upload(upload: str, name: str, replicas: int, meta: str, now: float) -> Deferred[None]:
        """An upload of ``name`` begins; it lasts until completed, aborted or expired."""

    def upload(upload: str) -> Deferred[Optional[tuple[str, int, str, float]]]:
        """An upload under way: (name, replicas, meta, created), or None."""

    def uploads(prefix: str, after_name: str, after_id: str, limit: int) -> Deferred[list[tuple[str, str, float]]]:
        """Uploads under way of names starting with ``prefix``, after (name, id): (id, name, created) each."""

    def parts(upload: str, after: int, limit: int) -> Deferred[list[tuple[int, FileRecord]]]:
        """An upload's stored parts numbered above ``after``: (number, record) each, in order."""

    def commit_part(upload: str, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
                    servers: list[str], now: float, meta: str = "") -> Deferred[None]:
        """A part stored, as commit does a file; NotFound when the upload is over."""

    def complete(upload: str, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
                 servers: list[str], now: float, meta: str, chosen: list[str], digest: str,
                 expect: Optional[Expect] = None) -> Deferred[bool]:
        """The chosen parts become ``name``'s version, with the manifest ``blob``, atomically
        (False: superseded); NotFound without the upload, BadArgs for a part not stored;
        ``expect`` as for commit."""

    def abort_upload(upload: str) -> Deferred[bool]:
        """An upload given up, its parts garbage; False when it was not under way."""

    def expire_uploads(before: float, limit: int) -> Deferred[list[str]]:
        """Abort uploads silent since ``before`` (at most ``limit``); their ids."""

    def next_upload(after: str) -> Deferred[Optional[tuple[str, Optional[FileRecord]]]]:
        """Rebuilding: the first upload with hidden files after ``after``, and its manifest's record."""

    def adopt_manifest(upload: str, version: int, name: str, meta: str, sha256: str,
                       parts: list[tuple[str, int, str]], now: float) -> Deferred[str]:
        """Rebuilding: the object a manifest describes, made again: "made", "kept", "older" or "lost"."""

    def drop_unfinished(upload: str) -> Deferred[bool]:
        """Rebuilding: the parts of an upload no longer known are garbage."""

    def parts_at(upload: str, offset: int, limit: int) -> Deferred[list[tuple[int, FileRecord]]]:
        """A completed upload's parts from the one holding byte ``offset``: (start, record) each."""

    # -- buckets (the S3 gateway's): bucket B holds the files named B/...

    def create_bucket(name: str, now: float) -> Deferred[bool]:
        """Make a bucket; fires False when it exists already."""

    def delete_bucket(name: str) -> Deferred[None]:
        """Remove a bucket: NotFound when there is none, NotEmpty while it holds files."""

    def bucket(name: str) -> Deferred[Optional[float]]:
        """When a bucket was created, or None when there is none."""

    def buckets(prefix: str, after: str, limit: int) -> Deferred[list[tuple[str, float]]]:
        """The buckets whose names start with ``prefix`` and sort after
        ``after``, ``(name, created)`` in name order, at most ``limit``."""

    # -- reads

    def read(name: str) -> Deferred[Optional[FileRecord]]:
        """The FileRecord of ``name`` (or None) for a client's request: never
        waits behind writes being flushed."""

    def kept_record(name: str) -> Optional[FileRecord]:
        """The FileRecord of ``name`` if it is at hand at once (what
        :meth:`lookup` would answer), else None. Not a Deferred."""

    def guess(name: str) -> Optional[FileRecord]:
        """The FileRecord ``name`` had when it was last looked up here, if
        at hand; on a catalog other proxies share it may be outdated. Not a
        Deferred."""

    def listing(prefix: str, after: str, limit: Optional[int]) -> Deferred[Listing]:
        """A :class:`deposito.catalog.listing.Listing` of the names starting with
        ``prefix`` after ``after`` (at most ``limit``, None: all), read in
        batches from one snapshot; to be closed when done."""

    # -- changes

    def delete(name: str, expect: Optional[Expect] = None) -> Deferred[Optional[FileRecord]]:
        """Remove ``name``; fires with the record it had, or None. With
        ``expect``, only if its current version (or None) meets it."""

    def set_replicas(name: str, count: int, up: Optional[Iterable[str]] = None) -> Deferred[Optional[FileRecord]]:
        """Change the wanted count and queue the file; fires with the record,
        or None. ``up``: the servers this proxy sees up, from which the
        file is counted under or over at once (STATUS)."""

    def drop_copy(blob: str, server: str) -> Deferred[None]:
        """A copy found corrupt stops counting and is garbage; its file is queued."""

    def reconcile_inventory(server: str, present: list[str], lo: Optional[str], hi: Optional[str],
                            before: float, held_only: bool = False
                            ) -> Deferred[tuple[int, int, list[str], list[str]]]:
        """Compare a range of a server's listing with the catalog; fires with
        ``(missing, counted, the blobs it does not know, names changed)``;
        ``held_only``: only the copies it lacks (see Catalog.reconcile_inventory)."""

    def judge_unknown(server: str, blobs: list[tuple[str, Optional[str], Optional[int], int]],
                      before: float) -> Deferred[tuple[int, int, int]]:
        """Blobs the catalog does not know, with the name and version their
        metadata says (None: unreadable) and their age in seconds: garbage
        when the catalog gave that version out, left alone a while when it
        never did (see Catalog.judge_unknown); fires with ``(garbage, left
        alone, of the garbage those never given out but too old to be left)``."""

    # -- STATUS and garbage

    def counts(servers: list[str]) -> Deferred[Counts]:
        """The :class:`deposito.catalog.Counts` kept with every change, the
        garbage counted on ``servers`` (those up) alone."""

    def garbage(servers: list[str], limit: int) -> Deferred[list[tuple[str, str]]]:
        """Claim up to ``limit`` ``(blob, server)`` copies to delete from ``servers``."""

    def forget_garbage(deleted: list[tuple[str, str]], now: float) -> Deferred[None]:
        """These ``(blob, server)`` copies were deleted from their servers at ``now``."""

    def release_garbage(pairs: list[tuple[str, str]]) -> Deferred[None]:
        """These claimed copies could not be deleted yet."""

    def garbage_count() -> Deferred[list[tuple[str, int]]]:
        """Copies to delete, by server: ``(server, count)`` pairs."""


class IMultipart(Interface):
    """Multipart uploads (S3's): parts stored as they come, the object made
    of them at once at Complete (see deposito.depot.uploads)."""

    def create(name: str, replicas: Optional[int], meta: str) -> Awaitable[str]:
        """Awaitable: a new upload's id."""

    def upload(upload: str) -> Awaitable[tuple[str, int, str, float]]:
        """Awaitable: (name, replicas, meta, created) of an upload under way; NotFound else."""

    def begin_part(upload: str, number: int, size: int) -> Awaitable[Upload]:
        """Awaitable: an Upload for part ``number``, finished or aborted as any (IDepot.finish_put)."""

    def parts(upload: str, after: int, limit: int) -> Deferred[list[tuple[int, FileRecord]]]:
        """The parts stored, numbered above ``after``: (number, record) each."""

    def uploads(prefix: str, after_name: str, after_id: str, limit: int) -> Deferred[list[tuple[str, str, float]]]:
        """Uploads under way of names starting with ``prefix``: (id, name, created) each."""

    def abort(upload: str) -> Awaitable[None]:
        """Awaitable: the upload given up, its parts deleted; NotFound when not under way."""

    def complete(upload: str, chosen: list[FileRecord], meta: str,
                 expect: Optional[Expect] = None) -> Awaitable[FileRecord]:
        """Awaitable: the object made of ``chosen`` (part records, in order),
        committed (if the name's current version meets ``expect``)."""


class IDepot(Interface):
    """What the gateways (the text protocol, HTTP, S3) call on the proxy's
    depot. Failures are :class:`deposito.errors.DepositoError`. What a
    method says is "awaitable" is a coroutine or a Deferred, to be awaited."""

    closed_for_rebuild = Attribute(
        "True while the catalog is being rebuilt from the servers on request, by this"
        " proxy or another sharing the catalog: only SERVERS and STATUS are answered meanwhile")
    uploads = Attribute("The multipart uploads (an IMultipart), for the S3 gateway")

    def begin_put(name: str, size: int, replicas: Optional[int]) -> Awaitable[Upload]:
        """Awaitable: an Upload with a stream open to each placed server
        (``replicas`` None: the default count)."""

    def finish_put(upload: Upload) -> Awaitable[FileRecord]:
        """Awaitable: every byte is in; the committed FileRecord once enough
        copies are durable and verified."""

    def abort_put(upload: Upload) -> None:
        """The client went away mid-upload: nothing of it is kept."""

    def lookup(name: str) -> Awaitable[FileRecord]:
        """Awaitable: the FileRecord of ``name``, or NotFound."""

    def recent(name: str) -> Optional[FileRecord]:
        """The FileRecord of ``name`` if at hand at once, else None."""

    def guess(name: str) -> Optional[FileRecord]:
        """What the FileRecord of ``name`` was when last looked up, if at
        hand; on a catalog other proxies share, only :meth:`lookup` says
        whether it still stands."""

    def healthy(record: FileRecord) -> list[Member]:
        """The up servers holding a copy, in the order to read them."""

    def read(record: FileRecord, consumer: IConsumer, offset: int = 0, length: Optional[int] = None,
             started: Callable[[], None] = lambda: None) -> Awaitable[None]:
        """Awaitable: stream bytes ``[offset, offset + length)`` of the file
        (``length`` None: to the end) to ``consumer``, failing over from copy
        to copy; ``started()`` is called before the first byte. The one read
        path of every gateway, whole files and byte ranges alike."""

    def read_small(record: FileRecord) -> Optional[Deferred[list[bytes]]]:
        """A Deferred of a small file's bytes (a list of pieces) read at once,
        or None when :meth:`read` is the way."""

    def copy_missing(member: Member, blob: str) -> None:
        """A read found ``member`` lacking a copy of ``blob`` the catalog
        counts: it stops counting, and is made again elsewhere."""

    def listing(prefix: str, after: str, limit: Optional[int]) -> Awaitable[Listing]:
        """Awaitable: a :class:`deposito.catalog.listing.Listing`, to be closed when done."""

    def delete(name: str, expect: Optional[Expect] = None) -> Awaitable[FileRecord]:
        """Awaitable: the record deleted, or NotFound; ``expect`` as for ICatalog.delete."""

    def replicas(name: str, count: int, wait: bool) -> Awaitable[tuple[FileRecord, int]]:
        """Awaitable: ``(record, healthy copies)`` once the wanted count is
        set (with ``wait``: once the healthy count equals it)."""

    def servers() -> list[Member]:
        """The storage servers known, by id."""

    def status(copies: bool = False) -> Awaitable[dict[str, int]]:
        """Awaitable: STATUS's counts (``copies``: with the copies wanted and healthy)."""

    def create_bucket(name: str) -> Awaitable[bool]:
        """Awaitable: True when the bucket is made now, False when it existed."""

    def delete_bucket(name: str) -> Awaitable[None]:
        """Awaitable: the bucket removed; NotFound when there is none, NotEmpty
        while a file ``name/...`` exists."""

    def bucket(name: str) -> Awaitable[Optional[float]]:
        """Awaitable: when the bucket was created, or None when there is none."""

    def buckets(prefix: str, after: str, limit: int) -> Awaitable[list[tuple[str, float]]]:
        """Awaitable: the buckets whose names start with ``prefix`` and sort
        after ``after``, ``(name, created)`` in name order, at most ``limit``."""


class IDevice(Interface):
    """A storage server's device: its blob store behind threads of its own.
    What the blob protocol, its receiver and sender, and the storage node
    call on it; none of it blocks the reactor."""

    capacity = Attribute("The most bytes this device may hold (set by the storage node)")
    reserved = Attribute("Bytes claimed by blobs being written")
    used = Attribute("Bytes the blobs on it take")
    count = Attribute("How many blobs it holds")
    corrupt_listeners = Attribute("Called with (blob id, why) for each copy found corrupt")

    def start() -> None:
        """Start its threads."""

    def stop() -> None:
        """Stop them."""

    def free() -> int:
        """Bytes that may still be claimed."""

    def room() -> int:
        """What it holds plus what its disk could still take, in bytes."""

    def failed(failure: Failure) -> DepositoError | None:
        """What a write or delete that failed on the disk tells the proxy
        (NoSpace, or an Internal saying the disk cannot be written), or None
        for an error of another kind."""

    def cannot_write() -> bool:
        """Whether a write or delete failed lately because the disk cannot
        be written (read-only, failing): no new copies should come here."""

    def reserve(size: int) -> None:
        """Claim room for a blob about to be written, or NoSpace."""

    def release(size: int) -> None:
        """Give back what :meth:`reserve` claimed."""

    def begin(meta: BlobMeta, cache: bool = False) -> IncomingBlob:
        """A new IncomingBlob (``cache``: keep it in the page cache)."""

    def write(incoming: IncomingBlob, pieces: list[bytes]) -> Deferred[None]:
        """Append ``pieces`` to the blob, in order after earlier writes."""

    def write_piece(incoming: IncomingBlob, buffer: mmap.mmap, length: int) -> Deferred[None]:
        """Append the first ``length`` bytes of ``buffer`` (a
        diskio.take_buffer buffer, left alone until this fires) to the blob."""

    def commit(incoming: IncomingBlob, sha256: str, blocks: str, last: bytes = b"") -> Deferred[BlobMeta]:
        """Write ``last``, then make the blob durable and visible (call once
        every earlier write has completed); fires with its BlobMeta."""

    def abort(incoming: IncomingBlob) -> Deferred[None]:
        """Throw an unfinished blob away."""

    def delete(blob_id: str) -> Deferred[bool]:
        """Delete a blob; fires with whether it existed."""

    def set_wanted(blob_id: str, replicas: int) -> Deferred[bool]:
        """Keep ``replicas`` as the blob's wanted count (what a rebuild
        reads), durably; fires with whether the blob is here."""

    def open(blob_id: str) -> Deferred[tuple[Reader, BlobMeta]]:
        """``(file, metadata)`` of a blob, for :meth:`read_block`; fails with NotFound."""

    def open_set_aside(blob_id: str) -> Deferred[tuple[Reader, BlobMeta]]:
        """The same, of a copy moved aside as corrupt, to read its good blocks; fails with NotFound."""

    def read_block(f: Reader, meta: BlobMeta, index: int) -> Deferred[bytes]:
        """A checked block; fails with Corrupt on rot."""

    def read_block_now(f: Reader, meta: BlobMeta, index: int) -> memoryview | None:
        """A checked block when it can be read without waiting on the disk,
        else None; raises Corrupt on rot. The view is good until the next call."""

    def close(f: Reader) -> Deferred[None]:
        """Close what :meth:`open` opened."""

    def check(blob_id: str, up_to: int | None = None) -> Deferred[BlobMeta]:
        """Read a whole blob against its checksums (only when ``up_to``
        bytes or smaller, if given); fails with Corrupt, or with
        deposito.blobstore.Stopped when the device stops meanwhile."""

    def checked(blob_id: str) -> Deferred[BlobMeta]:
        """The blob's metadata once it was read whole and found good, now or
        lately; Unavailable while a big one is being read for it."""

    def corrupt(blob_id: str, why: str) -> Deferred[object]:
        """A copy was found bad: quarantine it and tell the listeners."""

    def sweep() -> Deferred[int]:
        """Remove metadata left without its blob; fires with how many."""

    def inventory(chunk: int = 1000, ids_only: bool = False) -> IInventoryCursor:
        """A cursor over the blobs (their metadata, or ids alone) in id order."""


class IInventoryCursor(Interface):
    """A device's blobs in id order, a chunk at a time (see :meth:`IDevice.inventory`)."""

    def next() -> Deferred[tuple[list[BlobMeta] | list[str], bool]]:
        """Fires with ``(chunk, more)``: the next chunk, and whether any blob
        follows it. Ask only once the last one came."""
