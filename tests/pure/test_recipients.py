"""The recipient map: postmap's text format, read directly, and lookups with extensions."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from backupmx.common.recipient_map import (
    MapError,
    RecipientMap,
    load_recipient_map,
    logical_lines,
    parse_recipient_lines,
)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_text(tmp_path: Path, text: str, delimiters: str = "") -> RecipientMap:
    return load_recipient_map([write(tmp_path, "relay_recipients", text)], delimiters)


def test_comments_blank_lines_and_tabs(tmp_path: Path) -> None:
    recipients = load_text(tmp_path, (
        "# a comment line\n"
        "\n"
        "alice@example.test OK\n"
        "   \n"
        "  # an indented comment is a comment too\n"
        "bob@example.test\t\tOK\n"
        "carol@example.test\tsome longer value with spaces\n"
        "\t\n"
    ))
    assert recipients.users == {"example.test": frozenset({"alice", "bob", "carol"})}
    assert len(recipients) == 3


def test_continuation_lines_join_the_previous_key(tmp_path: Path) -> None:
    recipients = load_text(
        tmp_path, "alice@example.test\n   OK continued\n\tand more\nbob@example.test x\n")
    assert recipients.accepts("alice", "example.test")
    assert recipients.accepts("bob", "example.test")
    assert len(recipients) == 2


def test_logical_lines_numbers_are_first_physical_lines() -> None:
    lines = ["# c\n", "a@b.test\n", " value\n", "\n", "c@d.test v\r\n"]
    assert list(logical_lines(lines)) == [(2, "a@b.test value"), (5, "c@d.test v")]


def test_user_and_catch_all_keys(tmp_path: Path) -> None:
    recipients = load_text(tmp_path, "alice@example.test OK\n@catchall.test OK\n")
    assert recipients.covers("example.test") and recipients.covers("catchall.test")
    assert not recipients.covers("other.test")
    assert recipients.accepts("alice", "example.test")
    assert not recipients.accepts("bob", "example.test")
    assert recipients.accepts("anyone", "catchall.test")
    assert not recipients.accepts("alice", "other.test")
    assert recipients.catch_all == frozenset({"catchall.test"})


def test_keys_are_case_insensitive(tmp_path: Path) -> None:
    recipients = load_text(tmp_path, "Alice@Example.TEST OK\n@CatchAll.Test OK\n")
    assert recipients.accepts("alice", "example.test")
    assert recipients.accepts("x", "catchall.test")


@pytest.mark.parametrize("delimiters,local,expected", [
    ("+", "alice+news", True),
    ("+", "alice+news+more", True),
    ("+", "alice-news", False),
    ("+-", "alice-news", True),
    ("+-", "alice+news", True),
    ("-+", "alice-x+y", True),
    ("", "alice+news", False),
    ("+", "alice", True),
    ("+", "mallory+alice", False),
    ("+", "+alice", False),
])
def test_recipient_delimiter_extensions(tmp_path: Path, delimiters: str, local: str,
                                        expected: bool) -> None:
    recipients = load_text(tmp_path, "alice@example.test OK\n", delimiters)
    assert recipients.accepts(local, "example.test") is expected


def test_key_with_extension_is_matched_exactly(tmp_path: Path) -> None:
    recipients = load_text(tmp_path, "alice+list@example.test OK\n", "+")
    assert recipients.accepts("alice+list", "example.test")
    assert not recipients.accepts("alice", "example.test")


def test_several_files_are_merged(tmp_path: Path) -> None:
    first = write(tmp_path, "one", "alice@example.test OK\n@catchall.test OK\n")
    second = write(tmp_path, "two", "bob@example.test OK\ncarol@other.test OK\n")
    recipients = load_recipient_map([first, second], "+")
    assert recipients.users == {"example.test": frozenset({"alice", "bob"}),
                                "other.test": frozenset({"carol"})}
    assert recipients.catch_all == frozenset({"catchall.test"})
    assert recipients.sources == (first, second)
    assert recipients.delimiters == "+"


def test_duplicate_keys_count_once(tmp_path: Path) -> None:
    assert len(load_text(tmp_path, "a@x.test 1\nA@X.test 2\n")) == 1


def test_empty_file_is_an_empty_map(tmp_path: Path) -> None:
    recipients = load_text(tmp_path, "# nothing yet\n")
    assert len(recipients) == 0 and not recipients.covers("example.test")


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "crlf"
    path.write_bytes(b"alice@example.test OK\r\n\r\nbob@example.test OK\r\n")
    assert len(load_recipient_map([str(path)])) == 2


@pytest.mark.parametrize("text,line", [
    ("alice@example.test OK\nbob@example.test\n", 2),  # key without value
    ("ok@example.test OK\n\n# c\nalice OK\n", 4),  # key without @
    ("ok@example.test OK\nalice@ OK\n", 2),  # no domain
    ("  continued OK\nalice@example.test OK\n", 1),  # continuation with nothing before it
    ("a@b.test x\nuser@other.test@example.test OK\n", 2),  # routing in a key
])
def test_broken_lines_name_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, "broken", text)
    with pytest.raises(MapError) as caught:
        load_recipient_map([path])
    assert str(caught.value).startswith(f"{path}:line {line}:")


def test_broken_second_file_is_named(tmp_path: Path) -> None:
    good = write(tmp_path, "good", "a@b.test OK\n")
    bad = write(tmp_path, "bad", "a@b.test OK\nnoat OK\n")
    with pytest.raises(MapError, match=f"^{bad}:line 2:"):
        load_recipient_map([good, bad])


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1"
    path.write_bytes(b"alice@example.test OK\nj\xfcrgen@example.test OK\n")
    with pytest.raises(MapError, match=f"^{path}: not UTF-8"):
        load_recipient_map([str(path)])


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(MapError, match=f"^{missing}: cannot read: No such file"):
        load_recipient_map([missing])


def test_utf8_local_parts_are_accepted(tmp_path: Path) -> None:
    assert load_text(tmp_path, "jürgen@example.test OK\n").accepts("jürgen", "example.test")


def test_parse_lines_directly_reports_source() -> None:
    lines: List[str] = ["a@b.test OK", "oops"]
    with pytest.raises(MapError, match="^src:line 2: expected 'key value'"):
        parse_recipient_lines(lines, "src")


# ---- property: however the file is laid out, the map holds exactly its keys -------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_domain = st.builds(lambda a, b: f"{a}.{b}", _label,
                    st.sampled_from(["test", "example", "invalid"]))
_local = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1,
                 max_size=10)
_key = st.one_of(st.builds(lambda local, d: f"{local}@{d}", _local, _domain),
                 st.builds(lambda d: f"@{d}", _domain))
_layout = st.sampled_from([" OK", "\tOK", "  \t OK", "\n OK", "\n\tOK x", " OK\n# note",
                           " OK\n\n", " OK\r"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_key, _layout), max_size=20), st.booleans())
def test_any_layout_of_keys_loads_exactly_those_keys(entries: "list[tuple[str, str]]",
                                                     upper: bool) -> None:
    text = "# generated\n" + "".join(
        f"{key.upper() if upper else key}{layout}\n" for key, layout in entries)
    users, catch_all = parse_recipient_lines(text.splitlines(keepends=True), "<gen>")
    expected_users: "dict[str, set[str]]" = {}
    expected_catch_all = set()
    for key, _ in entries:
        local, _, domain = key.lower().rpartition("@")
        if local:
            expected_users.setdefault(domain, set()).add(local)
        else:
            expected_catch_all.add(domain)
    assert users == expected_users
    assert catch_all == expected_catch_all


def test_key_with_trailing_dot_is_kept_as_postfix_keeps_it_with_a_warning() -> None:
    # Postfix's relay_recipient_maps never matches alice@example.test. for a recipient of
    # example.test (tests/integration/test_postfix_addresses.py measures it): neither do we.
    warnings: List[str] = []
    users, catch_all = parse_recipient_lines(["alice@Example.Test. OK\n", "@catch.test. OK\n"],
                                             "src", warnings)
    assert users == {"example.test.": {"alice"}} and catch_all == {"catch.test."}
    assert warnings == [
        "src:line 1: key 'alice@Example.Test.' does not match the address 'alice@example.test' "
        "(not in Postfix, not here): write 'alice@example.test'",
        "src:line 2: key '@catch.test.' does not match the address '@catch.test' "
        "(not in Postfix, not here): write '@catch.test'",
    ]
