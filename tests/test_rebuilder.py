"""Which servers' listings the rebuilder takes in rather than judges, and
what it keeps in the catalog about them (deposito.depot.rebuilder, with the
catalog's side played by the test)."""

from __future__ import annotations

from twisted.internet import defer, task

from deposito.depot.rebuilder import Rebuilder
from deposito.roster import Member, Roster


class Marks:
    """The catalog as the rebuilder uses it: marks, successions and adoptions noted."""

    def __init__(self) -> None:
        self.marked: set[str] = set()
        self.lost: list[str] = []
        self.adopted: list[tuple[str, int]] = []

    def mark_adopting(self, server: str, adopting: bool) -> defer.Deferred[None]:
        (self.marked.add if adopting else self.marked.discard)(server)
        return defer.succeed(None)

    def adopting(self) -> defer.Deferred[list[str]]:
        return defer.succeed(sorted(self.marked))

    def lost_catalogs(self) -> defer.Deferred[list[str]]:
        return defer.succeed(sorted(set(self.lost)))

    def succeed(self, lost: str, floor: int) -> defer.Deferred[None]:
        self.lost.append(lost)
        return defer.succeed(None)

    def raise_floor(self, floor: int) -> defer.Deferred[None]:
        self.floor = max(getattr(self, "floor", 0), floor)
        return defer.succeed(None)

    def adopt(self, server: str, entries: list, now: float) -> defer.Deferred[int]:
        self.adopted.append((server, len(entries)))
        return defer.succeed(len(entries))

    def mark_rebuilding(self, rebuilding: bool) -> defer.Deferred[None]:
        self.rebuilding = rebuilding
        return defer.succeed(None)

    def next_upload(self, after: str) -> defer.Deferred:
        return defer.succeed(None)  # no multipart upload to make again


def answer(d: defer.Deferred):
    out: list = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


ENTRY = ("a" * 32, 1, 10, "0" * 64, 1, "f", "")


def test_a_taking_in_cut_short_goes_on_when_the_server_joins_again():
    """A server of a lost catalog this one succeeds is marked before it is
    welcomed; the proxy stops before its last chunk; the next proxy reads
    the mark and takes the server in again, though it now serves this
    catalog (judged, its blobs not taken in yet would be garbage). The mark
    goes once its last chunk is in."""
    clock = task.Clock()
    db = Marks()
    first = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    assert answer(first.takes_in("s1", "0ld")) is False and db.marked == set()  # a catalog it does not succeed
    first.lost = {"0ld"}
    assert answer(first.takes_in("s1", "0ld")) is True and db.marked == {"s1"}
    member = Member("s1", "z", "h", 1, adopted=True, serves="0ld")
    answer(first.take(member, [ENTRY], more=True))
    assert db.adopted == [("s1", 1)] and db.marked == {"s1"}  # stopped here

    again = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    again.lost, again.adopting = {"0ld"}, set(db.marked)
    assert answer(again.takes_in("s1", None)) is True  # it serves this catalog now
    member = Member("s1", "z", "h", 1, adopted=True)
    answer(again.take(member, [ENTRY], more=False))
    assert db.marked == set() and not member.adopted and again.adopting == set()
    assert answer(again.takes_in("s1", None)) is False


def test_a_server_another_proxy_is_taking_in_or_of_a_catalog_it_succeeded_is_taken_in_here_too():
    """Two proxies share the catalog, and this one started before the other
    marked a server or succeeded a lost catalog: what it remembers says no,
    the catalog says yes. Judged, the server's blobs not taken in yet would
    be garbage, deleted under the other proxy's taking in."""
    clock = task.Clock()
    db = Marks()
    here = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    assert answer(here.takes_in("s1", None)) is False and answer(here.takes_in("s2", "0ld")) is False
    db.marked.add("s1")  # the other proxy is taking s1 in: s1 serves this catalog already
    db.lost.append("0ld")  # ...and succeeded 0ld, which s2 still serves
    assert answer(here.takes_in("s1", None)) is True and "s1" in here.adopting
    assert answer(here.takes_in("s2", "0ld")) is True and db.marked == {"s1", "s2"} and here.lost == {"0ld"}
    assert answer(here.takes_in("s3", None)) is False  # a server nobody takes in is judged


def test_a_lost_catalog_is_succeeded_when_its_server_is_first_taken_in_not_when_it_joins():
    """While rebuilding, a server of another catalog is asked for its
    listing, but it may still refuse (a proxy of its catalog is joined):
    the succession is recorded at its first chunk, which shows it serves
    this proxy."""
    clock = task.Clock()
    db = Marks()
    rebuilder = Rebuilder(clock, db, Roster(clock), done=lambda: None, asked=True)
    assert answer(rebuilder.takes_in("s1", "0ld")) is True
    assert db.lost == []  # not yet
    member = Member("s1", "z", "h", 1, adopted=True, serves="0ld")
    answer(rebuilder.take(member, [ENTRY], more=True))
    answer(rebuilder.take(member, [ENTRY], more=False))
    assert db.lost == ["0ld"] and rebuilder.lost == {"0ld"}


def test_a_chunk_the_catalog_could_not_take_in_fails_and_the_server_stays_marked_to_be_taken_in_again():
    """The catalog failed on a chunk of a server being taken in: take()
    fails (so its connection reads nothing more: see the cluster protocol),
    and the server stays marked, so the next listing is taken in again
    rather than judged."""
    from deposito.errors import Unavailable

    class Failing(Marks):
        def adopt(self, server: str, entries: list, now: float) -> defer.Deferred[int]:
            return defer.fail(Unavailable("the catalog database is out of reach"))

    clock = task.Clock()
    db = Failing()
    rebuilder = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    rebuilder.lost = {"0ld"}
    assert answer(rebuilder.takes_in("s1", "0ld")) is True and db.marked == {"s1"}
    member = Member("s1", "z", "h", 1, adopted=True, serves="0ld")
    outcome = answer(rebuilder.take(member, [ENTRY], more=True))
    assert outcome.check(Unavailable)
    assert db.marked == {"s1"} and member.adopted and "s1" in rebuilder.adopting
    assert answer(rebuilder.takes_in("s1", None)) is True  # joined again: taken in again


def test_the_multipart_objects_are_made_again_once_the_catalog_answers():
    """The catalog out of reach when the multipart objects are to be made
    again: the rebuild is not over; they are made once it answers."""
    from deposito.errors import Unavailable

    class Flaky(Marks):
        asked = 0

        def next_upload(self, after: str) -> defer.Deferred:
            self.asked += 1
            if self.asked == 1:
                return defer.fail(Unavailable("the catalog database is out of reach"))
            return defer.succeed(None)  # no upload to make again

    clock = task.Clock()
    db = Flaky()
    done: list[bool] = []
    rebuilder = Rebuilder(clock, db, Roster(clock), done=lambda: done.append(True))
    answer(defer.ensureDeferred(rebuilder.start(empty=True)))
    clock.advance(5.0)  # the grace: no server joined
    assert db.asked == 1 and rebuilder.rebuilding and not done
    clock.advance(5.0)
    assert db.asked == 2 and not rebuilder.rebuilding and done == [True]


def test_a_chunk_that_fails_otherwise_leaves_the_server_taken_in_never_judged():
    """A chunk the catalog refuses for good (not for want of reach or room):
    said; the listing goes on, and at its end the server is reported but
    stays marked, its listings taken in rather than judged (none of its
    blobs is garbage for want of being in the catalog). Its next listing
    that goes through ends that."""
    class Refusing(Marks):
        refuse = True

        def adopt(self, server: str, entries: list, now: float) -> defer.Deferred[int]:
            if self.refuse:
                self.refuse = False
                return defer.fail(ValueError("UNIQUE constraint failed: files.blob"))
            return super().adopt(server, entries, now)

    clock = task.Clock()
    db = Refusing()
    rebuilder = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    rebuilder.lost = {"0ld"}
    assert answer(rebuilder.takes_in("s1", "0ld")) is True
    member = Member("s1", "z", "h", 1, adopted=True, serves="0ld")
    assert answer(rebuilder.take(member, [ENTRY], more=True)) is None  # said, and the listing goes on
    assert answer(rebuilder.take(member, [ENTRY], more=False)) is None
    assert "s1" in rebuilder._reported and member.adopted and db.marked == {"s1"}
    answer(rebuilder.take(member, [ENTRY], more=False))  # its next listing, whole
    assert not member.adopted and db.marked == set()


def test_a_rebuild_cut_short_before_its_multipart_objects_goes_on_at_the_next_start():
    """The catalog says a rebuild is under way from its start until its
    multipart objects are made again, the last step: a proxy stopped before
    rebuilds again when it starts, on a catalog no longer empty (before: it
    did not, and the completed multipart objects stayed hidden for good)."""
    clock = task.Clock()
    db = Marks()
    first = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    answer(defer.ensureDeferred(first.start(empty=True)))
    assert db.rebuilding  # and the proxy stops here
    again = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    answer(defer.ensureDeferred(again.start(empty=False, owed=db.rebuilding)))
    assert again.rebuilding and not again.closed_for_rebuild  # clients served meanwhile, as on an empty one
    clock.advance(5.0)  # the grace: no server joined
    assert not again.rebuilding and db.rebuilding is False
    quiet = Rebuilder(clock, db, Roster(clock), done=lambda: None)
    answer(defer.ensureDeferred(quiet.start(empty=False, owed=db.rebuilding)))
    assert not quiet.rebuilding


def test_a_rebuild_whose_manifests_could_not_all_be_read_stays_owed():
    """A manifest unread (its servers not back, say) keeps its parts for the
    next rebuild: the mark stays, so the next start rebuilds again by itself
    (before: the mark went, and the object stayed hidden until --rebuild)."""
    from deposito.catalog import FileRecord

    class OneManifest(Marks):
        def next_upload(self, after: str) -> defer.Deferred:
            record = FileRecord("\x00m", 1, "b" * 32, 100, "0" * 64, 2, ())
            return defer.succeed(("u" * 32, record) if after == "" else None)

    clock = task.Clock()
    db = OneManifest()
    rebuilder = Rebuilder(clock, db, Roster(clock), done=lambda: None)  # no read path: the manifest is unread
    answer(defer.ensureDeferred(rebuilder.start(empty=False, owed=True)))
    clock.advance(5.0)
    assert not rebuilder.rebuilding and db.rebuilding is True
