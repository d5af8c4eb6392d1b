"""A file host on 127.0.0.1 standing in for the model hubs: HEAD, GET and byte ranges."""

from __future__ import annotations

import http.server
import threading

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of known bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    def _body(self) -> bytes | None:
        if FileHost.files is None:
            return FileHost.payload
        return FileHost.files.get(self.path.split("?", 1)[0])

    def do_HEAD(self):
        body = self._body()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()

    def do_GET(self):
        FileHost.requested.append(self.path)
        body = self._body()
        if body is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if FileHost.cut_after is not None and not header:
            # The connection drops part-way: the client was promised more than it gets.
            self.wfile.write(body[:FileHost.cut_after])
            FileHost.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class FileHost:
    """Serves PAYLOAD at any path, or, when `files` is set, each file at its path (404 for any
    other). Set `FileHost.cut_after = n` to drop the next full GET after n bytes; `requested`
    lists the paths asked for."""

    payload = PAYLOAD
    files: dict[str, bytes] | None = None
    cut_after: int | None = None
    requested: list[str] = []

    def __init__(self, files: dict[str, bytes] | None = None):
        FileHost.files = files
        FileHost.requested = []

    def __enter__(self) -> "FileHost":
        self.server, self.url = serve(_Handler)
        return self

    def __exit__(self, *exc) -> None:
        stop(self.server)
        FileHost.cut_after = None
        FileHost.files = None


def serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A server for `handler` on a free port of 127.0.0.1, answering in a thread; its address."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
