"""The SD 1.5 download offer: streamed to .part, resumed, verified, only then renamed.

Runs against a real HTTP server on 127.0.0.1 that stands in for the model host.
"""

import hashlib
from dataclasses import replace

import pytest

from engine.models.downloads import SD15, DownloadError, ModelDownloader, sd15_offer
from tests.support.fake_host import PAYLOAD, FileHost


@pytest.fixture
def host():
    with FileHost() as server:
        yield server.url + "/model.safetensors"


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
    FileHost.cut_after = 300_000
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


def test_the_offer_follows_hf_endpoint_for_mirrors():
    assert sd15_offer().url.startswith("https://huggingface.co/stable-diffusion-v1-5/")
    assert sd15_offer("http://mirror.local/").url.startswith("http://mirror.local/stable-diffusion-v1-5/")
    assert sd15_offer("http://mirror.local").sha256 == SD15.sha256
