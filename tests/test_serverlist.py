"""Server-list files and inline server lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from marsconn.core.errors import Problem
from marsconn.plan.provenance import Provenance, SourceKind
from marsconn.plan.serverlist import (
    DEFAULT_LIST_FILES,
    ListedServer,
    read_list_file,
    split_inline_list,
)

ACCEPTED_FILE = "the path of a readable file with one server URL per line"


def listed(path: Path, *items: tuple[str, int]) -> list[ListedServer]:
    return [
        ListedServer(text, Provenance(SourceKind.LIST_FILE, "server", str(path), line))
        for text, line in items
    ]


def test_default_list_files_in_documented_order() -> None:
    assert DEFAULT_LIST_FILES == (
        "/etc/mars/mars-api-server-legacy.list",
        "/etc/mars/mars-api-server.list",
    )


def test_reads_one_url_per_line_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "servers.list"
    path.write_text(
        "# MARS servers\n"
        "\n"
        "http://mars-1:9000\n"
        "   http://mars-2:9000   \n"
        "\t# indented comment\n"
        "http://mars-3:9000 # trailing comment\n"
        "http://mars-4:9000/a#b\n"
        "mars-5:9000\n"
        "http://[fd00::5]:9000\n"
        "   \n"
    )
    entries, problems = read_list_file(path, "environment variable MARS_API_SERVER_LIST")
    assert problems == []
    assert entries == listed(
        path,
        ("http://mars-1:9000", 3),
        ("http://mars-2:9000", 4),
        ("http://mars-3:9000", 6),
        # '#' inside a URL is not a comment; URL parsing rejects it later as a fragment.
        ("http://mars-4:9000/a#b", 7),
        ("mars-5:9000", 8),
        ("http://[fd00::5]:9000", 9),
    )


def test_crlf_line_endings_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "servers.list"
    path.write_bytes(b"\xef\xbb\xbfhttp://mars-1:9000\r\nhttp://mars-2:9000\r\n")
    entries, problems = read_list_file(path, "x")
    assert problems == []
    assert entries == listed(path, ("http://mars-1:9000", 1), ("http://mars-2:9000", 2))


def test_keeps_duplicates_for_the_plan_to_report(tmp_path: Path) -> None:
    path = tmp_path / "servers.list"
    path.write_text("http://a:9000\nhttp://a:9000\n")
    entries, _ = read_list_file(path, "x")
    assert [e.provenance.line for e in entries] == [1, 2]


def test_empty_file_has_no_entries_and_no_problems(tmp_path: Path) -> None:
    path = tmp_path / "servers.list"
    path.write_text("# nothing yet\n\n")
    assert read_list_file(path, "x") == ([], [])


def test_missing_file_names_the_setting_that_pointed_there(tmp_path: Path) -> None:
    path = tmp_path / "nope.list"
    assert read_list_file(path, "environment variable MARS_API_SERVER_LIST") == (
        [],
        [
            Problem(
                "environment variable MARS_API_SERVER_LIST",
                f"server-list file {str(path)!r} does not exist",
                accepted=ACCEPTED_FILE,
            )
        ],
    )


def test_unreadable_file_names_the_setting_and_the_reason(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (unlike chmod 000).
    assert read_list_file(tmp_path, "adaptor config key 'mars_server_list'") == (
        [],
        [
            Problem(
                "adaptor config key 'mars_server_list'",
                f"server-list file {str(tmp_path)!r} cannot be read: "
                "a directory, not a regular file",
                accepted=ACCEPTED_FILE,
            )
        ],
    )


def test_non_utf8_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "servers.list"
    path.write_bytes(b"http://a:9000\n\xff\xfe\n")
    assert read_list_file(path, "environment variable MARS_API_SERVER_LIST") == (
        [],
        [
            Problem(
                "environment variable MARS_API_SERVER_LIST",
                f"server-list file {str(path)!r} is not UTF-8 text (byte 14)",
                accepted="a text file with one server URL per line",
            )
        ],
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ws://a:9001,ws://b:9001", ["ws://a:9001", "ws://b:9001"]),
        (" ws://a:9001 , ,ws://b:9001,", ["ws://a:9001", "ws://b:9001"]),
        (",", []),
        (["ws://a:9001", "  ", " ws://b:9001 "], ["ws://a:9001", "ws://b:9001"]),
        ((), []),
    ],
)
def test_inline_lists_skip_empty_items(value: str | list[str], expected: list[str]) -> None:
    entries, problems = split_inline_list(value, Provenance(SourceKind.ENV, "MARS_WS_SERVERS"))
    assert problems == []
    assert [e.text for e in entries] == expected
    assert [e.provenance for e in entries] == [
        Provenance(SourceKind.ENV, f"MARS_WS_SERVERS[{i}]") for i in range(len(expected))
    ]


def test_inline_list_positions_keep_file_and_line() -> None:
    prov = Provenance(SourceKind.YAML, "mars_ws_servers", "/etc/c.yaml", 4)
    entries, _ = split_inline_list(["ws://a", "ws://b"], prov)
    assert entries[1].provenance == Provenance(
        SourceKind.YAML, "mars_ws_servers[1]", "/etc/c.yaml", 4
    )
    assert entries[1].provenance.describe() == "/etc/c.yaml:4 (key 'mars_ws_servers[1]')"


def test_inline_list_items_must_be_strings() -> None:
    prov = Provenance(SourceKind.ADAPTOR, "mars_servers")
    entries, problems = split_inline_list(["ws://a", 5, "ws://b"], prov)  # type: ignore[list-item]
    assert [(e.text, e.provenance.name) for e in entries] == [
        ("ws://a", "mars_servers[0]"),
        ("ws://b", "mars_servers[2]"),
    ]
    assert problems == [
        Problem(
            "adaptor config key 'mars_servers'",
            "list item 1 is a int, not a string",
            value="5",
            accepted="server URLs as strings",
        )
    ]
