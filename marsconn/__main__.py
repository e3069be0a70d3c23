"""``python -m marsconn``: the same as the ``marsconn`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
