"""optuna-dashboard on a study's storage, with the study's artifact store."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from yolotune.errors import YolotuneError
from yolotune.studies._storage import open_storage

__all__ = ["serve_dashboard"]


class _Server(ThreadingMixIn, WSGIServer):
    """Threaded WSGI server: a browser's idle preconnect must not stall the other requests."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log on the console, and no reverse DNS lookups."""

    def address_string(self) -> str:
        return str(self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_dashboard(
    *,
    storage_url: str,
    artifacts: Path | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Serve optuna-dashboard until interrupted; ``on_ready`` gets the URL once it listens.

    The app is optuna-dashboard's own WSGI app (``optuna_dashboard.wsgi``), served by the standard
    library's ``wsgiref`` like ``optuna_dashboard.run_server`` does, but bound here first so that a busy
    port is a one-line error and ``on_ready`` runs once the socket listens.

    Args:
        storage_url: Optuna storage URL of the study (see ``open_storage``).
        artifacts: Directory of the study's Optuna ``FileSystemArtifactStore``; ``None`` serves none.
        host: Address to bind.
        port: Port to bind (0 picks a free one).
        on_poll: Called between requests, about twice a second; a KeyboardInterrupt it raises stops
            the server like Ctrl-C.
        on_ready: Called once with the dashboard's URL when the server listens.

    Raises:
        YolotuneError: The storage cannot be opened, or the address cannot be bound.
    """
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    if not 0 <= port <= 65535:
        raise YolotuneError(f"--port must be 0-65535 (0: any free port); got {port}")
    storage = open_storage(storage_url)
    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None else None
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    try:
        server_class = _Server6 if ":" in host else _Server
        server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise YolotuneError(f"port {port} is in use on {host}; pass --port") from None
        raise YolotuneError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    if on_poll is not None:
        server.service_actions = on_poll  # type: ignore[method-assign]
    shown = f"[{host}]" if ":" in host else host
    with server, contextlib.suppress(KeyboardInterrupt):
        if on_ready is not None:
            on_ready(f"http://{shown}:{server.server_port}/dashboard/")
        server.serve_forever()
