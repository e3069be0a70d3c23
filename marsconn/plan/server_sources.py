"""Which source supplies the servers, and its entries as written.

Sources in precedence order: the adaptor's ``mars_servers``, the adaptor's
``mars_server_list``, in WebSocket mode ``MARS_WS_SERVERS``,
``MARS_API_SERVER_LIST``, then the first default list file that exists. Only
the chosen source is read; parsing its entries into endpoints is the plan's work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import Problem
from .load import LoadedSettings
from .serverlist import ListedServer, read_list_file, split_inline_list

if TYPE_CHECKING:
    pass


__all__ = ["Selected", "ServerSearch", "select_servers"]


# Plain classes, not dataclasses: these two are internal, and creating a dataclass costs
# about half a millisecond of import time.
class ServerSearch:
    """Where server lists were looked for, to explain an empty result."""

    __slots__ = ("looked",)

    def __init__(self) -> None:
        self.looked: list[str] = []


class Selected:
    """The server entries of the one source that supplies them, and which setting that is."""

    __slots__ = ("direct_ws", "entries", "problems", "setting")

    def __init__(
        self,
        entries: list[ListedServer] | None = None,
        problems: list[Problem] | None = None,
        setting: str | None = None,
        direct_ws: bool = False,
    ) -> None:
        self.entries = entries if entries is not None else []
        self.problems = problems if problems is not None else []
        self.setting = setting  # the MarsSettings field, or None for a default list file
        self.direct_ws = direct_ws  # the entries name WebSocket servers (MARS_WS_SERVERS)


def _read_listed(path: Path, pointed_by: str, search: ServerSearch) -> Selected:
    entries, problems = read_list_file(path, pointed_by)
    if not entries and not problems:
        search.looked.append(f"{path} (no servers in it)")
    return Selected(entries, problems)


def select_servers(
    loaded: LoadedSettings, websocket: bool, list_files: Sequence[str], search: ServerSearch
) -> tuple[Selected, list[Problem]]:
    """The server entries from the highest-precedence source that is set.

    Order: the adaptor's ``mars_servers``, the adaptor's ``mars_server_list``,
    in WebSocket mode ``MARS_WS_SERVERS``, ``MARS_API_SERVER_LIST``, then the
    first default list file that exists. Only the chosen source is read; an
    explicit list path of a lower source that does not exist is a warning.
    """
    s, prov = loaded.settings, loaded.provenance
    chosen: Selected | None = None
    if s.servers is not None:
        entries, problems = split_inline_list(s.servers, prov["servers"])
        search.looked.append(f"{prov['servers'].describe()} (empty)")
        chosen = Selected(entries, problems, "servers")
    else:
        search.looked.append("adaptor config key 'mars_servers' (unset)")
    if chosen is None:
        if s.server_list is not None:
            chosen = _read_listed(s.server_list, prov["server_list"].describe(), search)
            chosen.setting = "server_list"
        else:
            search.looked.append("adaptor config key 'mars_server_list' (unset)")
    if chosen is None and websocket:
        if s.ws_servers:
            entries, problems = split_inline_list(s.ws_servers, prov["ws_servers"])
            chosen = Selected(entries, problems, "ws_servers", direct_ws=True)
        else:
            search.looked.append(
                f"{prov['ws_servers'].describe()} (empty)"
                if s.ws_servers is not None
                else "MARS_WS_SERVERS (unset)"
            )
    if chosen is None:
        if s.api_server_list is not None:
            chosen = _read_listed(s.api_server_list, prov["api_server_list"].describe(), search)
            chosen.setting = "api_server_list"
        else:
            search.looked.append("MARS_API_SERVER_LIST (unset)")
    if chosen is None:
        for candidate in list_files:
            if os.path.exists(candidate):
                chosen = _read_listed(Path(candidate), f"default list file {candidate}", search)
                break
            search.looked.append(f"{candidate} (absent)")
        else:
            return Selected(), []

    warnings: list[Problem] = []
    # Default list files are only consulted when no list path is set, so any
    # list path set but not chosen ranks below a chosen setting. One pointing
    # at nothing is a deployment mistake waiting to bite when the setting above
    # it is removed.
    if chosen.setting is not None:
        winner = prov[chosen.setting].describe()
        for name in ("server_list", "api_server_list"):
            path = getattr(s, name)
            if path is not None and name != chosen.setting and not os.path.exists(path):
                warnings.append(
                    Problem(
                        prov[name].describe(),
                        f"names {str(path)!r}, which does not exist; it is not used because "
                        f"{winner} takes precedence",
                    )
                )
    return chosen, warnings
