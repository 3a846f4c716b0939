"""Multipart uploads in the catalog, on both databases: parts are hidden
files, completing an upload makes the object's version a row pointing to
them in one transaction, and whatever is not kept becomes garbage."""

from __future__ import annotations

import pytest
import pytest_twisted

from deposito.errors import BadArgs, NotFound
from deposito.hidden import manifest_name, part_name, pointer_blob

U = "a" * 32
V = "b" * 32


@pytest.fixture
def cat(catalogs):
    return catalogs.new()


def store_part(cat, upload, number, size, servers=("s1", "s2"), token=None, replicas=2):
    """Store part ``number`` as the depot does: begin, then commit_part. Its hidden name."""
    name = part_name(upload, number, token or f"{number:032x}")
    blob = f"p{upload[:4]}{number}{token or ''}"
    version = cat.begin_upload(name, blob, list(servers))
    cat.commit_part(upload, name, version, blob, size, "s" * 64, replicas, list(servers), 1.0, f'{{"etag": "{number}"}}')
    return name


def complete(cat, upload, name, chosen, servers=("s1", "s2"), replicas=2):
    blob = "m" + upload[:8]
    version = cat.begin_upload(name, blob, list(servers))
    return cat.complete(upload, name, version, blob, 100, "d" * 64, replicas, list(servers), 2.0,
                        '{"etag": "x-2"}', chosen, "f" * 64)


def blobs_of(cat):
    return {row[0] for row in cat.db.execute("SELECT blob FROM copies").fetchall()}


def test_parts_become_the_objects_version_at_complete_and_are_read_in_order(cat):
    cat.create_upload(U, "b/obj", 2, '{"type": "text/plain"}', 0.0)
    assert cat.upload(U)[:3] == ("b/obj", 2, '{"type": "text/plain"}')
    first = store_part(cat, U, 1, 10)
    second = store_part(cat, U, 2, 7)
    store_part(cat, U, 3, 5)  # stored, but not chosen
    assert cat.lookup("b/obj") is None and cat.list() == []  # nothing visible before Complete
    assert [n for n, _ in cat.parts(U, 0, 10)] == [1, 2, 3] and [n for n, _ in cat.parts(U, 1, 10)] == [2, 3]
    assert complete(cat, U, "b/obj", [first, second])
    record = cat.lookup("b/obj")
    assert (record.parts, record.size, record.sha256, record.blob) == (U, 17, "f" * 64, pointer_blob(U))
    assert record.servers == ("s1", "s2")
    assert [r.name for r in cat.list()] == ["b/obj"]  # the hidden files are never listed
    assert [(start, r.name) for start, r in cat.parts_at(U, 0, 10)] == [(0, first), (10, second)]
    assert [(start, r.name) for start, r in cat.parts_at(U, 10, 10)] == [(10, second)]
    assert [start for start, _ in cat.parts_at(U, 9, 1)] == [0]
    assert cat.parts_at(U, 17, 10) == []
    assert cat.upload(U) is None and cat.uploads("", "", "", 10) == []
    assert sorted(cat.garbage(["s1", "s2"])) == [("p" + U[:4] + "3", "s1"), ("p" + U[:4] + "3", "s2")]
    assert cat.lookup(manifest_name(U)).blob == "m" + U[:8]
    counts = cat.counts()
    assert (counts.files, counts.bytes, counts.wanted) == (1, 17, 6)  # one object; its 2 parts and manifest, twice
    assert cat.records(["b/obj"]) == [None]  # the reconciler plans its hidden files, not the pointer
    assert pointer_blob(U) not in {r.blob for r in cat.records_after("", 100)}


def test_replacing_or_deleting_a_multipart_object_makes_all_its_blobs_garbage(cat):
    cat.create_upload(U, "b/obj", 2, "", 0.0)
    one = store_part(cat, U, 1, 10)
    complete(cat, U, "b/obj", [one])
    held = blobs_of(cat)
    assert len(held) == 2  # the part and the manifest
    version = cat.begin_upload("b/obj", "plain", ["s1"])
    assert cat.commit("b/obj", version, "plain", 3, "x", 1, ["s1"], 5.0)
    assert {blob for blob, _ in cat.garbage(["s1", "s2"])} == held
    assert cat.lookup(manifest_name(U)) is None and cat.parts(U, 0, 10) == []
    cat.create_upload(V, "b/obj", 1, "", 6.0)
    complete(cat, V, "b/obj", [store_part(cat, V, 1, 4, ("s1",), replicas=1)], ("s1",), replicas=1)
    assert cat.lookup("b/obj").parts == V
    cat.delete("b/obj")
    assert cat.lookup("b/obj") is None and blobs_of(cat) == set()
    counts = cat.counts()
    assert (counts.files, counts.bytes, counts.wanted) == (0, 0, 0)
    assert cat.db.execute("SELECT count(*) FROM names WHERE name < ' '").fetchone()[0] == 0


def test_a_part_uploaded_again_replaces_the_first(cat):
    cat.create_upload(U, "b/obj", 2, "", 0.0)
    first = store_part(cat, U, 1, 10, token="1" * 32)
    second = store_part(cat, U, 1, 12, token="2" * 32)
    assert [r.name for _, r in cat.parts(U, 0, 10)] == [second]
    assert {blob for blob, _ in cat.garbage(["s1", "s2"])} == {"p" + U[:4] + "1" + "1" * 32}
    with pytest.raises(BadArgs):  # the first is no longer there to be chosen
        complete(cat, U, "b/obj", [first])
    assert cat.upload(U) is not None  # a failed Complete changed nothing
    assert complete(cat, U, "b/obj", [second]) and cat.lookup("b/obj").size == 12


def test_abort_and_expiry_leave_garbage_only_and_late_parts_cannot_commit(cat):
    cat.create_upload(U, "b/one", 2, "", 0.0)
    cat.create_upload(V, "b/two", 2, "", 0.0)
    store_part(cat, U, 1, 10)
    store_part(cat, V, 1, 10)  # touched at 1.0
    assert [u for u, _, _ in cat.uploads("b/", "", "", 10)] == [U, V]
    assert [u for u, _, _ in cat.uploads("b/", "b/one", U, 10)] == [V]
    assert cat.abort_upload(U) and not cat.abort_upload(U)
    assert cat.expire_uploads(0.5, 10) == [] and cat.expire_uploads(1.5, 10) == [V]
    assert cat.uploads("", "", "", 10) == [] and blobs_of(cat) == set()
    assert len(cat.garbage(["s1", "s2"])) == 4
    name = part_name(U, 2, "c" * 32)
    version = cat.begin_upload(name, "late", ["s1"])
    with pytest.raises(NotFound):
        cat.commit_part(U, name, version, "late", 1, "x", 1, ["s1"], 3.0)
    cat.abandon("late")  # as the depot does when a commit fails
    assert ("late", "s1") in cat.garbage(["s1"])
    with pytest.raises(NotFound):
        complete(cat, U, "b/one", [])
    counts = cat.counts()
    assert (counts.files, counts.bytes, counts.wanted) == (0, 0, 0)


def test_a_complete_older_than_a_newer_put_is_garbage(cat):
    cat.create_upload(U, "b/obj", 1, "", 0.0)
    one = store_part(cat, U, 1, 10, ("s1",), replicas=1)
    old = cat.begin_upload("b/obj", "m1", ["s1"])  # the Complete's manifest, begun first
    newer = cat.begin_upload("b/obj", "plain", ["s2"])
    assert cat.commit("b/obj", newer, "plain", 3, "x", 1, ["s2"], 5.0)
    assert not cat.complete(U, "b/obj", old, "m1", 100, "d" * 64, 1, ["s1"], 6.0, "", [one], "f" * 64)
    assert cat.lookup("b/obj").blob == "plain"
    assert {blob for blob, _ in cat.garbage(["s1", "s2"])} == {"m1", "p" + U[:4] + "1"}


def test_replicas_of_a_multipart_object_reach_each_of_its_hidden_files(cat):
    cat.create_upload(U, "b/obj", 2, "", 0.0)
    chosen = [store_part(cat, U, n, 10) for n in (1, 2)]
    complete(cat, U, "b/obj", chosen)
    cat.settle([])  # nothing
    cat.db.execute("DELETE FROM work")
    record = cat.set_replicas("b/obj", 3)
    assert record.replicas == 3
    assert {r.replicas for _, r in cat.parts_at(U, 0, 10)} == {3} and cat.lookup(manifest_name(U)).replicas == 3
    assert sorted(name for name, _, _ in cat.due_work(10.0, 10)) == sorted([manifest_name(U), *chosen])
    assert cat.counts().wanted == 9


def test_the_objects_servers_are_those_of_its_part_with_fewest_copies(cat):
    cat.create_upload(U, "b/obj", 2, "", 0.0)
    chosen = [store_part(cat, U, n, 10) for n in (1, 2)]
    complete(cat, U, "b/obj", chosen)
    cat.drop_copy("p" + U[:4] + "2", "s1")
    assert cat.lookup("b/obj").servers == ("s2",)
    cat.add_intent("p" + U[:4] + "2", "s3")
    assert cat.add_copy(chosen[1], "p" + U[:4] + "2", "s3", 3.0)
    assert cat.lookup("b/obj").servers in (("s1", "s2"), ("s2", "s3"))


def test_deleting_a_bucket_aborts_its_uploads(cat):
    cat.create_bucket("b", 0.0)
    cat.create_upload(U, "b/obj", 2, "", 0.0)
    store_part(cat, U, 1, 10)
    cat.delete_bucket("b")
    assert cat.upload(U) is None and blobs_of(cat) == set()


def test_a_manifest_of_a_name_and_metadata_with_line_separators_reads_back():
    """A manifest's lines end in \n alone; U+2028 and U+2029 in a name or in
    its metadata are no line ends (before: BadManifest, and a rebuild could
    not take such an object in)."""
    from deposito import manifest
    from deposito.hidden import part_name

    parts = [(part_name("ab" * 16, 1, "cd" * 16), 5, "a" * 64), (part_name("ab" * 16, 2, "ef" * 16), 7, "b" * 64)]
    text = manifest.write("bucket/a\u2028b", '{"user": {"k": "x\u2029y"}}', "c" * 64, parts)
    read = manifest.read(text)
    assert (read.name, read.meta, read.sha256) == ("bucket/a\u2028b", '{"user": {"k": "x\u2029y"}}', "c" * 64)
    assert read.parts == parts


@pytest_twisted.inlineCallbacks
def test_a_read_of_many_parts_goes_on_when_its_version_is_replaced_meanwhile():
    """An object of more parts than one page of them (256): its part list
    is read before the first byte, so a read begun before the object was
    replaced (its part rows gone at once) reads it to the end; it was cut
    at the second page, every time."""
    from twisted.internet import defer

    from deposito.catalog import FileRecord
    from deposito.depot.reads import PARTS_PAGE, Reader

    parts = [(i * 10, FileRecord(f"p{i}", 1, f"{i:032x}", 10, "x", 2, ("s1",))) for i in range(PARTS_PAGE + 5)]

    class Catalog:
        def parts_at(self, upload, at, limit):
            return defer.succeed([(s, r) for s, r in parts if s + r.size > at][:limit])

    reader = Reader(Catalog(), None, None, lambda: None)  # type: ignore[arg-type]
    read: list[str] = []

    async def read_part(part, consumer, offset, length, started):
        read.append(part.name)
        parts.clear()  # replaced once the first byte went: its part rows are gone

    reader.read = read_part  # type: ignore[method-assign]
    record = FileRecord("obj", 1, "pointer", 10 * (PARTS_PAGE + 5), "x", 2, (), parts="u1")
    yield defer.ensureDeferred(reader._read_parts(record, None, 0, record.size, lambda: None))
    assert read == [f"p{i}" for i in range(PARTS_PAGE + 5)]
