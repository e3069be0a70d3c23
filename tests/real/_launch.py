"""Run one real cads-mars-server in this process (started by the fixtures as a child).

``python _launch.py ws HOST PORT`` runs the WebSocket server;
``python _launch.py pipe HOST PORT MARS LOGDIR`` runs the forking pipe server
with ``MARS`` as its MARS executable. The server code comes from
``PYTHONPATH``; its settings from the ``MARS_*`` environment variables the
fixture sets (they are read when the server's modules are imported).
"""

from __future__ import annotations

import asyncio
import signal
import sys


def run_ws(host: str, port: int) -> None:
    from cads_mars_server.ws_server import kill_all_active_processes, start_ws_server

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            # As the server's own entry point does: stop every MARS it started.
            kill_all_active_processes()
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        server = await start_ws_server(host, port)
        async with server:
            print(f"ready ws {host}:{port}", flush=True)
            await stop.wait()

    asyncio.run(serve())


def run_pipe(host: str, port: int, mars: str, logdir: str) -> None:
    from cads_mars_server.server import setup_server

    server = setup_server(mars, host, port, 30, logdir)
    print(f"ready pipe {host}:{port}", flush=True)
    server.serve_forever()


def main() -> None:
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "ws":
        run_ws(host, port)
    elif kind == "pipe":
        run_pipe(host, port, sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(f"unknown server kind {kind!r}; use ws or pipe")


if __name__ == "__main__":
    main()
