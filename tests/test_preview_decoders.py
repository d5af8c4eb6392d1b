"""The "TAESD" and "Approx NN" live previews: decoders read from files in the published layouts
and checked against independent references (diffusers' own AutoencoderTiny decode, the web UI's
VAEApprox formula written out here), the SD or SDXL file chosen by the model family, previews
every N steps in a job, and a missing file fetched in the background from a stand-in host
(resumed, checked, renamed only then) while the job falls back to Approx cheap with one warning."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch.nn import functional

from engine.addons import AddOns
from engine.engine import Engine
from engine.errors import RequestError
from engine.files import HashCache
from engine.models.downloads import CatalogueDownloads, DownloadError
from engine.models.model_catalogue import PREVIEW_DECODERS, ModelCatalogue
from engine.models.preview_models import PreviewModels
from engine.request import GenerationRequest
from engine.runs import generation
from engine.runs.preview import PendingPreview, Previewer
from engine.settings.store import Settings
from tests.support.fake_host import FileHost
from tests.support.preview_files import (
    approx_nn_state,
    published_taesd_decoder_state,
    published_taesd_sequential,
    saved,
    tiny_taesd,
    write,
)

CPU = torch.device("cpu")
TAESD_SD, TAESD_XL = "TAESD decoder (SD 1.x, 2.x)", "TAESD decoder (SDXL)"
APPROX_SD = "Approx NN (SD 1.x, 2.x)"
BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=4, width=64, height=80,
                         sampler_name="Euler", seed=77, save_images=False, save_grid=False)
KEYS = ("show_progress_type", "show_progress_every_n_steps", "live_previews_enable")


def uint8(rgb_minus1_to_1: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] to (H, W, 3) uint8, as a preview is shown."""
    return ((rgb_minus1_to_1[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def library(tmp_path, catalogue: ModelCatalogue | None = None) -> PreviewModels:
    models = tmp_path / "models"
    downloads = CatalogueDownloads(catalogue or ModelCatalogue(endpoints={"github": "http://127.0.0.1:9"}), models)
    return PreviewModels(downloads, lambda name: models / name)


@pytest.fixture(scope="module")
def taesd():
    return tiny_taesd(seed=3)


# Decoders against independent references.
def test_a_taesd_file_in_the_published_layout_decodes_as_autoencoder_tiny_does(tmp_path, taesd):
    state = published_taesd_decoder_state(taesd)
    published_taesd_sequential(state)  # the file's layout is madebyollin/taesd's own
    write(tmp_path / "models" / "VAE-approx" / "taesd_decoder.pth", state)
    decoder, note = library(tmp_path).decoder("TAESD", "sd1", CPU, torch.float32)
    assert note is None
    latents = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1)) * 2
    preview = Previewer("TAESD", None, "sd1", decoder)(latents)
    # The UNet's latents go in as they are: AutoencoderTiny's scaling factor is 1, not the VAE's.
    assert taesd.config.scaling_factor == 1.0
    expected = uint8(taesd.decode(latents / taesd.config.scaling_factor).sample)
    assert preview.size == (40, 48)
    assert np.array_equal(np.asarray(preview), expected)
    # The published architecture gives the same pixels ([0, 1] there, hence * 2 - 1).
    assert np.array_equal(uint8(published_taesd_sequential(state)(latents) * 2 - 1), expected)


def test_a_taesd_file_in_the_diffusers_layout_is_read_too(tmp_path, taesd):
    write(tmp_path / "models" / "VAE-approx" / "taesd_decoder.pth", taesd.state_dict())  # encoder and all
    decoder, note = library(tmp_path).decoder("TAESD", "sd1", CPU, torch.float32)
    latents = torch.randn(1, 4, 4, 4)
    assert note is None and torch.equal(decoder(latents), taesd.decode(latents).sample)


def test_approx_nn_is_the_web_uis_formula(tmp_path):
    state = approx_nn_state(seed=5)
    write(tmp_path / "models" / "VAE-approx" / "model.pt", state)
    decoder, _ = library(tmp_path).decoder("Approx NN", "sd2", CPU, torch.float32)
    latents = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(2))
    # Upscale 2x (nearest), pad 11, then each conv (no padding) and a leaky ReLU of slope 0.1.
    x = functional.pad(functional.interpolate(latents, scale_factor=2.0, mode="nearest"), (11, 11, 11, 11))
    for number in range(1, 9):
        x = functional.leaky_relu(functional.conv2d(x, state[f"conv{number}.weight"], state[f"conv{number}.bias"]), 0.1)
    preview = Previewer("Approx NN", None, "sd2", decoder)(latents)
    assert preview.size == (16, 12)  # a quarter of the 64x48 image
    assert np.abs(np.asarray(preview, dtype=np.int16) - uint8(x).astype(np.int16)).max() <= 1


def test_the_family_chooses_the_sd_or_the_sdxl_file(tmp_path):
    sd, xl = tiny_taesd(seed=1), tiny_taesd(seed=2)
    write(tmp_path / "models" / "VAE-approx" / "taesd_decoder.pth", published_taesd_decoder_state(sd))
    # The web UI keeps TAESD files in models/VAE-taesd: found there as well.
    write(tmp_path / "models" / "VAE-taesd" / "taesdxl_decoder.pth", published_taesd_decoder_state(xl))
    previews = library(tmp_path)
    latents = torch.randn(1, 4, 4, 4)
    for family, model in (("sd1", sd), ("sd2", sd), ("sdxl", xl)):
        decoder, note = previews.decoder("TAESD", family, CPU, torch.float32)
        assert note is None and torch.equal(decoder(latents), model.decode(latents).sample), family
    decoder, note = previews.decoder("TAESD", "flux", CPU, torch.float32)
    assert decoder is None and "no decoder for this kind of model" in note and "Approx cheap" in note


def test_a_broken_file_leaves_cheap_previews_with_the_reason(tmp_path):
    (tmp_path / "models" / "VAE-approx").mkdir(parents=True)
    (tmp_path / "models" / "VAE-approx" / "taesd_decoder.pth").write_bytes(b"not a torch file")
    decoder, note = library(tmp_path).decoder("TAESD", "sd1", CPU, torch.float32)
    assert decoder is None and "taesd_decoder.pth is not a readable weights file" in note
    write(tmp_path / "models" / "VAE-approx" / "model.pt", {"conv1.weight": torch.zeros(1)})
    decoder, note = library(tmp_path).decoder("Approx NN", "sd1", CPU, torch.float32)
    assert decoder is None and "model.pt is not an Approx NN" in note and "Approx cheap previews instead" in note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_taesd_preview_is_queued_and_gives_the_cpu_numbers(tmp_path, taesd):
    write(tmp_path / "models" / "VAE-approx" / "taesd_decoder.pth", published_taesd_decoder_state(taesd))
    previews = library(tmp_path)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    on_cpu, _ = previews.decoder("TAESD", "sd1", CPU, torch.float32)
    on_cuda, _ = previews.decoder("TAESD", "sd1", torch.device("cuda"), torch.float16)
    pending = Previewer("TAESD", None, "sd1", on_cuda)(latents.cuda())
    assert isinstance(pending, PendingPreview)  # the sampling loop does not wait for the copy
    expected = np.asarray(Previewer("TAESD", None, "sd1", on_cpu)(latents), dtype=np.int16)
    assert np.abs(np.asarray(pending(), dtype=np.int16) - expected).max() <= 2


# In a job.
@pytest.fixture
def settings(engine):
    before = {key: engine.settings[key] for key in KEYS}
    yield engine.settings
    engine.settings.update(before)


def test_a_job_makes_taesd_previews_every_n_steps(engine, settings, taesd, monkeypatch):
    folder = engine.addons.previews.folder_of("VAE-approx")
    write(folder / "taesd_decoder.pth", published_taesd_decoder_state(taesd))
    decoded = []
    original = generation.decode_fitting
    monkeypatch.setattr(generation, "decode_fitting",
                        lambda vae, latents, *a, **k: decoded.append(latents.clone()) or original(vae, latents, *a, **k))
    try:
        settings.update({"show_progress_type": "TAESD", "show_progress_every_n_steps": 2, "live_previews_enable": True})
        job = engine.submit(BASE)
        result = job.outcome()
    finally:
        shutil.rmtree(folder)
    assert not [w for w in result.warnings if "previews" in w]
    assert job.preview_id == 2  # steps 2 and 4 of 4
    assert job.preview.size == (64, 80)  # TAESD previews are full size
    # The last preview (Euler's last step: its denoised latents are the final ones) is the
    # AutoencoderTiny decode of the latents the VAE decoded into the image.
    expected = uint8(taesd.decode(decoded[0]).sample)
    assert np.abs(np.asarray(job.preview, dtype=np.int16) - expected.astype(np.int16)).max() <= 1


def test_without_the_file_and_network_the_job_previews_cheaply_and_says_why_once(engine, settings):
    settings.update({"show_progress_type": "Approx NN", "show_progress_every_n_steps": 1, "live_previews_enable": True})
    job = engine.submit(BASE)
    result = job.outcome()
    notes = [w for w in result.warnings if "Approx NN previews" in w]
    assert len(notes) == 1 and "models/VAE-approx/model.pt" in notes[0] and "Approx cheap" in notes[0]
    assert len(result.images) == 1 and job.preview.size == (8, 10)  # Approx cheap: an eighth
    engine.addons.previews.wait_for_downloads()  # the try against the unreachable host ends
    result = engine.submit(BASE).outcome()
    notes = [w for w in result.warnings if "Approx NN previews" in w]
    assert len(notes) == 1 and "the last try to download it failed" in notes[0]
    assert not (engine.addons.previews.folder_of("VAE-approx") / "model.pt").exists()
    engine.addons.previews.wait_for_downloads()


def test_the_setting_persists_and_refuses_other_methods(tmp_path):
    store = Settings(tmp_path / "config.json")
    store.update({"show_progress_type": "TAESD"})
    assert Settings(tmp_path / "config.json")["show_progress_type"] == "TAESD"
    with pytest.raises(RequestError, match="show_progress_type must be one of"):
        store.update({"show_progress_type": "Tiny"})


# Downloads from a stand-in host.
def served_catalogue(url: str, files: dict[str, bytes]) -> ModelCatalogue:
    """The catalogue pointed at the stand-in host, its preview entries pinned to the served files."""
    catalogue = ModelCatalogue(endpoints={"github": url})
    for entry in PREVIEW_DECODERS:
        data = files["/" + entry.path]
        checksum = {"git_blob_sha1": git_blob_id(data)} if entry.git_blob_sha1 else \
            {"sha256": hashlib.sha256(data).hexdigest()}
        catalogue = catalogue.replaced(entry.name, size=len(data), **checksum)
    return catalogue


@pytest.fixture(scope="module")
def files(taesd) -> dict[str, bytes]:
    by_name = {"taesd_decoder.pth": saved(published_taesd_decoder_state(taesd)),
               "taesdxl_decoder.pth": saved(published_taesd_decoder_state(tiny_taesd(seed=9))),
               "model.pt": saved(approx_nn_state(1)), "vaeapprox-sdxl.pt": saved(approx_nn_state(2))}
    return {"/" + entry.path: by_name[entry.filename] for entry in PREVIEW_DECODERS}


def test_a_missing_file_is_fetched_in_the_background_and_the_next_job_uses_it(engine, tmp_path, files, taesd):
    with FileHost(dict(files)) as host:
        addons = AddOns.in_data_dir(tmp_path, HashCache(tmp_path / "cache.json"),
                                    catalogue=served_catalogue(host.url, files))
        own = Engine(engine.models, engine.writer, Settings(tmp_path / "config.json"), addons, queue=engine.queue)
        own.settings.update({"show_progress_type": "TAESD", "show_progress_every_n_steps": 1})
        job = own.submit(BASE)
        notes = [w for w in job.outcome().warnings if "TAESD previews" in w]
        assert len(notes) == 1 and "being downloaded in the background" in notes[0]
        assert job.preview.size == (8, 10)  # Approx cheap meanwhile
        addons.previews.wait_for_downloads()
        target = tmp_path / "models" / "VAE-approx" / "taesd_decoder.pth"
        assert target.read_bytes() == files["/" + PREVIEW_DECODERS[0].path]
        assert not list(target.parent.glob("*.part"))
        job = own.submit(BASE)
        assert not [w for w in job.outcome().warnings if "previews" in w]
        assert job.preview.size == (64, 80)


@pytest.mark.parametrize("name", [TAESD_SD, APPROX_SD])
def test_a_cut_download_resumes_and_is_renamed_only_once_checked(tmp_path, files, name):
    with FileHost(dict(files)) as host:
        catalogue = served_catalogue(host.url, files)
        entry = catalogue.get(name)
        data = files["/" + entry.path]
        downloads = CatalogueDownloads(catalogue, tmp_path)
        target, part = tmp_path / "VAE-approx" / entry.filename, tmp_path / "VAE-approx" / (entry.filename + ".part")
        FileHost.cut_after = len(data) // 3
        with pytest.raises(DownloadError, match="try again to resume"):
            downloads.fetch(name)
        assert part.read_bytes() == data[:len(data) // 3] and not target.exists()
        assert downloads.fetch(name).read_bytes() == data and not part.exists()
        # A part file whose bytes are not the published ones is resumed, fails the check and is
        # deleted: never renamed into place. The next try starts afresh.
        target.unlink()
        part.write_bytes(b"\0" * (len(data) // 2))
        checksum = "git blob id" if entry.git_blob_sha1 else "sha256"
        with pytest.raises(DownloadError, match=f"{checksum} does not match the published one"):
            downloads.fetch(name)
        assert not part.exists() and not target.exists()
        assert downloads.fetch(name).read_bytes() == data


def test_a_wrong_file_is_refused_and_the_job_is_told_next_time(engine, tmp_path, files):
    wrong = dict(files)
    wrong["/" + PREVIEW_DECODERS[0].path] = saved(published_taesd_decoder_state(tiny_taesd(seed=11)))
    with FileHost(wrong) as host:
        previews = library(tmp_path, served_catalogue(host.url, files))
        decoder, note = previews.decoder("TAESD", "sd1", CPU, torch.float32)
        assert decoder is None and "being downloaded" in note
        previews.wait_for_downloads()
        assert not list((tmp_path / "models" / "VAE-approx").iterdir())
        decoder, note = previews.decoder("TAESD", "sd1", CPU, torch.float32)
        assert decoder is None and "git blob id does not match the published one" in note
        previews.wait_for_downloads()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_git_blob_check_is_gits_own_object_id(tmp_path, files):
    data = files["/" + PREVIEW_DECODERS[0].path]
    (tmp_path / "file").write_bytes(data)
    ids = subprocess.run(["git", "hash-object", str(tmp_path / "file")], capture_output=True, text=True, check=True)
    with FileHost(dict(files)) as host:
        catalogue = ModelCatalogue(endpoints={"github": host.url}).replaced(TAESD_SD, git_blob_sha1=ids.stdout.strip())
        assert CatalogueDownloads(catalogue, tmp_path).fetch(TAESD_SD).read_bytes() == data


def test_the_catalogue_pins_each_preview_file():
    catalogue = ModelCatalogue()
    for entry in PREVIEW_DECODERS:
        assert entry.folder == "VAE-approx" and catalogue.url(entry).startswith("https://github.com/")
        assert len(entry.sha256) == 64 or len(entry.git_blob_sha1) == 40, entry.name
    assert catalogue.url(catalogue.get(TAESD_XL)) == ("https://github.com/madebyollin/taesd/raw/"
                                                      "7f572ca629c9b0d3c9f71140e5f501e09f9ea280/taesdxl_decoder.pth")
    assert catalogue.get("Approx NN (SDXL)").file_names == ("vaeapprox-sdxl.pt",)
