"""Serve a folder report on 127.0.0.1 (browsers block ``fetch`` from ``file://``, so large reports, whose
cards load on demand, need a local server).

Only the report folder is served (never the rest of the run directory), read-only, with the same
Content-Security-Policy as the page plus ``X-Content-Type-Options: nosniff``. Binding to a port in use
raises :class:`UserError`.
"""

from __future__ import annotations

import errno
import functools
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from autointerp.errors import UserError

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_POST(self) -> None:
        self.send_error(405, "read-only")


def make_server(folder: Path, port: int) -> ThreadingHTTPServer:
    """A server for ``folder`` on 127.0.0.1:``port`` (0: any free port), bound but not yet serving
    (``folder`` may be filled after this call)."""
    folder = Path(folder)
    handler = functools.partial(_Handler, directory=str(folder))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on 127.0.0.1 is in use; pick another with --port (0: any free port)") from e
        if e.errno == errno.EACCES:
            raise UserError(f"port {port} needs privileges; use a port above 1023 with --port") from e
        raise


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/index.html"
