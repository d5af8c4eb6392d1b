"""A Hugging Face Hub stand-in on 127.0.0.1, answering file addresses as the Hub does:
`/<owner>/<repo>/resolve/<revision>/<file>` is, for a large (Git LFS) file, a 302 to its storage
carrying the file's sha256 in X-Linked-Etag and its size in X-Linked-Size; for a small file the
file itself, its git blob id as the ETag. Unknown files are 404."""

from __future__ import annotations

import hashlib
import http.server

from tests.support.fake_host import serve, stop


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: "FakeHub"

    def _answer(self, with_body: bool) -> None:
        hub = self.hub
        path = self.path.split("?", 1)[0]
        hub.requested.append((self.command, path))
        if path.startswith("/storage/"):
            body = hub.stored.get(path[len("/storage/"):])
            return self._send(200 if body is not None else 404, body or b"", {}, with_body)
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._send(404, b"", {}, with_body)
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        published = hub.repos.get(repo, {}).get(name)
        if published is None:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, with_body)
        served = hub.tampered.get(name, published)
        if len(published) >= hub.lfs_from and hub.checksums:
            sha = hashlib.sha256(published).hexdigest()
            hub.stored[sha] = served
            return self._send(302, b"", {"Location": f"/storage/{sha}", "X-Linked-Etag": f'"{sha}"',
                                         "X-Linked-Size": str(len(published))}, with_body)
        headers = {"ETag": f'"{git_blob_id(published)}"'} if hub.checksums else {}
        return self._send(200, served, headers, with_body)

    def _send(self, status: int, body: bytes, headers: dict, with_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)

    def log_message(self, *args):
        pass


class FakeHub:
    """`repos`: {"owner/name": {file: bytes}}. Files of `lfs_from` bytes or more are LFS files.
    `tampered`: {file: bytes} served instead of the published bytes (the checksum still describes
    the published ones); `checksums=False`: a host that publishes none. `requested` lists
    (method, path)."""

    def __init__(self, repos: dict[str, dict[str, bytes]], lfs_from: int = 1024):
        self.repos = repos
        self.lfs_from = lfs_from
        self.tampered: dict[str, bytes] = {}
        self.checksums = True
        self.stored: dict[str, bytes] = {}
        self.requested: list[tuple[str, str]] = []

    def __enter__(self) -> "FakeHub":
        self.server, self.url = serve(type("Handler", (_Handler,), {"hub": self}))
        return self

    def __exit__(self, *exc) -> None:
        stop(self.server)
