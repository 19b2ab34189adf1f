"""`serve()`: binds the socket, prints the URL, runs the app under uvicorn until SIGINT/SIGTERM stops it."""

import re
import signal
import socket
import sys

from embedsearch.core.errors import IndexStateError
from embedsearch.serve.app import create_app
from embedsearch.serve.settings import Limits, ServeSettings
from embedsearch.serve.snapshots import Registry

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(registry: Registry, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          cors: str | None = None, originals: bool = False, limits: Limits | None = None, ready=None) -> None:
    """Bind, print the URL (port 0 picks a free one), and answer until SIGINT/SIGTERM. `limits`: default
    `Limits()`."""
    import uvicorn

    if host not in LOOPBACK and not token:
        raise IndexStateError(f"--host {host} exposes the server beyond this machine: give --token TOKEN too "
                              "(every request but /v1/health must then carry it)")
    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
        raise IndexStateError("--token: use printable ASCII characters only (no spaces): it travels in an HTTP "
                              "header and a cookie")
    registry.check()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response goes out as it is written (headers, then body) instead of
    # waiting ~40 ms for the client's delayed ACK (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise IndexStateError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    # listen before the URL is printed: a client that connects as soon as it reads the line waits in the backlog
    # while uvicorn starts, instead of being refused (asyncio's create_server listens again, which is harmless)
    sock.listen(2048)
    bound = sock.getsockname()[1]
    # without a token, loopback is the only protection: answer only to the names a browser uses for it (not to a
    # page of another site whose DNS name was made to point at 127.0.0.1)
    hosts = None if token else frozenset({"127.0.0.1", "localhost", "[::1]"})
    app = create_app(registry, ServeSettings(token=token, cors=cors, originals=originals,
                                             limits=limits if limits is not None else Limits(),
                                             hosts=hosts))
    shown = f"[{host}]" if ":" in host else host
    print(f"embedsearch serve: http://{shown}:{bound}/ ({', '.join(registry.names())})", file=sys.stderr, flush=True)
    for name in registry.names():  # once per index, at start: why its thumbnails will be refused
        served = registry.get(name)
        thumbs = served.current.thumbs if served else None
        if thumbs is not None and thumbs.refused:
            print(f"embedsearch serve: {name}: images not served: {thumbs.refused} (to serve them: --image-root "
                  f"{thumbs.refused_folder})", file=sys.stderr, flush=True)
    if ready:
        ready(bound)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    # uvicorn answers SIGINT/SIGTERM with a graceful shutdown, then re-raises the signal to the handler it found:
    # a handler that only records it makes the stop a clean exit 0 (open requests finished, nothing to lose)
    stops: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, _frame: stops.append(n))
    uvicorn.Server(config).run(sockets=[sock])
    how = f" on {signal.Signals(stops[0]).name}" if stops else ""
    print(f"embedsearch serve: stopped{how}", file=sys.stderr, flush=True)
