from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from deposito.errors import BadArgs, from_reply, NotFound, Internal
from deposito.protocols.words import check_name, fields, parse_count, quote, split

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40)


@given(names, names)
def test_quote_then_split_gives_the_words_back(a, b):
    assert split(f"PUT {quote(a)} {quote(b)} 3") == ["PUT", a, b, "3"]


@given(st.text(max_size=60))
def test_split_raises_only_badargs(line):
    try:
        split(line)
    except BadArgs:
        pass


@given(names)
def test_fields_reads_back_a_quoted_value(name):
    assert fields(f"OK name={quote(name)} size=3")["name"] == name


def test_split_examples():
    assert split('GET  "a b"') == ["GET", "a b"]
    assert split(r'GET "say \"hi\" \\ now"') == ["GET", 'say "hi" \\ now']
    assert split("  ") == []
    for bad in ('GET "open', r'GET "bad \n escape"', 'GET a"b', 'GET "a"b'):
        with pytest.raises(BadArgs):
            split(bad)


def test_names_are_checked():
    assert check_name("dir/with/slashes") == "dir/with/slashes"
    assert check_name("é" * 512)  # 1024 bytes
    for bad in ("", "é" * 513, "tab\there", "nul\x00", "del\x7f"):
        with pytest.raises(BadArgs):
            check_name(bad)


def test_counts_are_checked():
    assert parse_count("16", "replicas", 1, 16) == 16
    for bad in ("17", "0", "-1", "1.5", "x", "١", "9" * 30):
        with pytest.raises(BadArgs):
            parse_count(bad, "replicas", 1, 16)
    with pytest.raises(BadArgs, match="size is too large: 9{30}\\.\\.\\.$"):
        parse_count("9" * 40, "size")  # a whole number, too large: not told it is none


def test_err_lines_map_to_exception_classes():
    e = from_reply("ERR notfound no file named x")
    assert isinstance(e, NotFound) and e.message == "no file named x"
    assert isinstance(from_reply("ERR weird thing"), Internal)
    assert NotFound("gone").reply() == "ERR notfound gone"


def test_a_command_takes_as_many_words_as_its_handler():
    from deposito.errors import BadArgs, BadCommand
    from deposito.protocols.lines import handler_for

    class Handlers:
        USAGE = {"TWO": "TWO <a> [<b>]"}

        def do_TWO(self, a, b=None):
            return a, b

        def do_ANY(self, *words):
            return words

    h = Handlers()
    assert handler_for(h, ["two", "x"])("x") == ("x", None)
    assert handler_for(h, ["TWO", "x", "y"])("x", "y") == ("x", "y")
    for words in (["TWO"], ["TWO", "x", "y", "z"]):
        with pytest.raises(BadArgs, match=r"usage: TWO <a> \[<b>\]"):
            handler_for(h, words)
    assert handler_for(h, ["ANY"] + ["w"] * 9)
    with pytest.raises(BadCommand):
        handler_for(h, ["_TWO", "x"])
