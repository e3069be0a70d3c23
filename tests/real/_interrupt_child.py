"""Child process for the Ctrl-C tests: a synchronous execute() waiting to be interrupted.

``python _interrupt_child.py ws|pipe URL TARGET REQUEST_ID REQUEST_JSON``
prints ``KeyboardInterrupt`` and exits 130 when Ctrl-C (SIGINT) reaches it,
or prints the result as JSON and exits 0 if the retrieval ends first.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _plans import make_environ, pipe_plan_real, ws_plan_real

import marsconn


def main() -> int:
    # A child started in the background inherits SIGINT ignored: restore Python's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode, url, target, request_id, request = sys.argv[1:6]
    plan = ws_plan_real([url]) if mode == "ws" else pipe_plan_real([url])
    try:
        result = marsconn.execute(plan, json.loads(request), make_environ(request_id), target)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        return 130
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
