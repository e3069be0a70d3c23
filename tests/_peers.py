"""Where the real peers (cads-mars-server, cads-adaptors) are, and what to do without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``../shared/peers`` beside the project root.
PEERS = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"


def require_peer(path: Path, what: str) -> Path:
    """``path`` if it is a file; else skip the test, or fail it in CI (``CI=true``)."""
    if path.is_file():
        return path
    reason = f"{what} is not at {path}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the differential tests")
    pytest.skip(reason)
