"""SIGHUP's reading of the proxy's --tokens and --s3-keys files again
(deposito.hangup), in this process; the signal itself on a real proxy is
in test_e2e.py."""

from __future__ import annotations

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from deposito.hangup import reread
from deposito.s3.keys import S3Keys
from deposito.tokens import Tokens


@pytest.fixture
def caplog_events():
    """What was logged meanwhile, as one text."""
    said: list[dict] = []
    globalLogPublisher.addObserver(said.append)
    yield lambda: "\n".join(formatEvent(event) for event in said)
    globalLogPublisher.removeObserver(said.append)


def test_tokens_saved_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "tokens"
    path.write_bytes(b"\xef\xbb\xbfalpha\n")
    assert Tokens.from_file(str(path)).check("alpha")


def test_a_file_read_again_replaces_the_set_and_one_that_fails_keeps_it(tmp_path, caplog_events):
    tokens_path, keys_path = tmp_path / "tokens", tmp_path / "keys"
    tokens_path.write_text("alpha\n")
    keys_path.write_text("AKID1 secret1\n")
    tokens, keys = Tokens.from_file(str(tokens_path)), S3Keys.from_file(str(keys_path))
    files = [("--tokens", tokens), ("--s3-keys", keys), ("--other", None)]

    tokens_path.write_text("beta\ngamma\n")
    keys_path.write_text("AKID2 secret2\n")
    reread(files)
    assert not tokens.check("alpha") and tokens.check("beta") and tokens.check("gamma")
    assert keys.secret("AKID1") is None and keys.secret("AKID2") == "secret2"
    assert "--tokens read again: 2 now" in caplog_events() and "--s3-keys read again: 1 now" in caplog_events()

    tokens_path.unlink()
    keys_path.write_text("AKID3\n")
    reread(files)
    assert tokens.check("beta") and keys.secret("AKID2") == "secret2"
    said = caplog_events()
    assert "--tokens not read again" in said and "--s3-keys not read again" in said and ":1: expected" in said
