"""A file host on 127.0.0.1 standing in for the model hub: HEAD, GET and byte ranges."""

from __future__ import annotations

import http.server
import threading

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of known bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(FileHost.payload)))
        self.end_headers()

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = FileHost.payload[start:]
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
    """Serves PAYLOAD at any path. Set `FileHost.cut_after = n` to drop the next full GET after n bytes."""

    payload = PAYLOAD
    cut_after: int | None = None

    def __enter__(self) -> "FileHost":
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        FileHost.cut_after = None
