"""The SD 1.5 download offer: streamed to .part, resumed, verified, only then renamed.

Runs against a real HTTP server on 127.0.0.1 that stands in for the model host.
"""

import hashlib
import http.server
import threading
from dataclasses import replace

import pytest

from engine.downloads import SD15, DownloadError, ModelDownloader

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Host(http.server.BaseHTTPRequestHandler):
    payload = PAYLOAD
    cut_after: int | None = None  # simulate a dropped connection on the first full request

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if _Host.cut_after is not None and not header:
            # The connection drops part-way: the client was promised more than it gets.
            self.wfile.write(body[:_Host.cut_after])
            _Host.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.safetensors"
    server.shutdown()


def _offer(url, payload=PAYLOAD):
    return replace(SD15, url=url, filename="model.safetensors",
                   sha256=hashlib.sha256(payload).hexdigest())


def test_download_verifies_and_renames_with_progress(host, tmp_path):
    seen = []
    downloader = ModelDownloader(_offer(host), tmp_path)
    assert downloader.reachable()
    path = downloader.download(lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "model.safetensors"
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not list(tmp_path.glob("*.part"))


def test_wrong_checksum_deletes_the_file(host, tmp_path):
    offer = replace(_offer(host), sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 does not match"):
        ModelDownloader(offer, tmp_path).download()
    assert list(tmp_path.iterdir()) == []


def test_a_cut_download_resumes_from_the_part_file(host, tmp_path):
    _Host.cut_after = 300_000
    downloader = ModelDownloader(_offer(host), tmp_path)
    with pytest.raises(DownloadError):
        downloader.download()
    part = tmp_path / "model.safetensors.part"
    assert part.stat().st_size == 300_000
    assert downloader.download().read_bytes() == PAYLOAD


def test_unreachable_host_is_not_offered(tmp_path):
    offer = replace(SD15, url="http://127.0.0.1:9/nothing")
    downloader = ModelDownloader(offer, tmp_path)
    assert downloader.reachable(timeout=1) is False
    with pytest.raises(DownloadError, match="Could not reach"):
        downloader.download()
