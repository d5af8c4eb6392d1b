"""Shared fixtures: tiny seeded checkpoints written to disk in the format users download, and an
engine that loads them through the same code a user's file takes. CPU only, no network."""

from __future__ import annotations

import os
import shutil
import socket

# Before torch is imported: one thread each, because the suite also runs servers beside itself
# on small machines, and oversubscribed cores make everything slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Standard upscaler and face models a test names but lacks must never be fetched from GitHub
# (auto_download_models is on by default): nothing answers here, so the fetch fails at once.
os.environ["SD_STUDIO_GITHUB_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

torch.set_num_threads(1)

from engine.addons import AddOns  # noqa: E402
from engine.devices import DeviceConfig  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.files import HashCache
from engine.models.registry import ModelRegistry  # noqa: E402
from engine.output.writer import OutputWriter  # noqa: E402
from engine.models.pipelines import ModelManager  # noqa: E402
from engine.settings.store import Settings  # noqa: E402
from engine.models.tiny_models import build_tiny_pipeline, write_config_folder  # noqa: E402
from tests.support.ldm_export import export_single_file  # noqa: E402
from tests.support.tiny_tokenizer import write_tiny_clip_tokenizer  # noqa: E402
from tests import tiers  # noqa: E402

FAMILIES = ("sd1", "sd2", "sdxl")


def pytest_collection_modifyitems(config, items):
    """The slow tier (tests/tiers.py) gets the `slow` marker: `./test.sh` leaves it out."""
    tiers.mark(items, pytest.mark.slow)


@dataclass(frozen=True)
class TinyModels:
    """Tiny checkpoints in models_dir (tiny-sd1.safetensors, ...) and the config root they need."""

    root: Path
    config_root: Path
    models_dir: Path
    tokenizer_dir: Path
    tokenizer_2_dir: Path

    def checkpoint(self, family: str) -> Path:
        return self.models_dir / f"tiny-{family}.safetensors"

    def reference_pipeline(self, family: str, seed: int = 0):
        """The same weights, built directly in diffusers (what the file must load back to)."""
        tokenizer = CLIPTokenizer.from_pretrained(str(self.tokenizer_dir))
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(self.tokenizer_2_dir)) if family == "sdxl" else None
        return build_tiny_pipeline(family, tokenizer, tokenizer_2, seed=seed)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer_dir = Path(write_tiny_clip_tokenizer(root / "tokenizer"))
    tokenizer_2_dir = Path(write_tiny_clip_tokenizer(root / "tokenizer_2", pad_token="!"))
    models = TinyModels(root, root / "model_configs", root / "models" / "Stable-diffusion",
                        tokenizer_dir, tokenizer_2_dir)
    models.models_dir.mkdir(parents=True)
    for family in FAMILIES:
        second = str(tokenizer_2_dir) if family == "sdxl" else None
        write_config_folder(family, models.config_root / family, str(tokenizer_dir), second)
        export_single_file(models.reference_pipeline(family), models.checkpoint(family), family)
    # The ecosystem marks an SD 2.x epsilon model with a .yaml beside it (tiny-sd2 is epsilon).
    models.checkpoint("sd2").with_suffix(".yaml").write_text(
        "model:\n  params:\n    parameterization: \"eps\"\n")
    return models


def make_engine(tiny_models: TinyModels, data_dir: Path, checkpoint: str | None = "tiny-sd1",
                allow_unsafe: bool = False) -> Engine:
    hashes = HashCache(data_dir / "cache.json")
    registry = ModelRegistry([tiny_models.models_dir], hashes)
    models = ModelManager(registry, DeviceConfig.choose(use_cpu=True),
                          config_root=tiny_models.config_root, allow_unsafe=allow_unsafe)
    engine = Engine(models, OutputWriter(data_dir / "outputs"), Settings(data_dir / "config.json"),
                    AddOns.in_data_dir(data_dir, hashes))
    if checkpoint:
        engine.load_checkpoint(checkpoint).outcome()
    return engine


@pytest.fixture(scope="session")
def engine(tiny_models, tmp_path_factory):
    """An engine with tiny-sd1 loaded. Tests must leave its model and settings as they found them."""
    engine = make_engine(tiny_models, tmp_path_factory.mktemp("engine-data"))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory, tiny_models):
    """`app.py --demo --api` on 127.0.0.1, shared by the API and browser tests.

    Its models folder also holds a tiny diffusers-format model, "tiny-folder", to switch to, and
    a LoRA for the demo model, "glowing-edges"; its extensions folder the test extensions "glow"
    (works) and "broken_import" (fails to load); models/ESRGAN a tiny x4 upscaler, "tiny-x4"; models/GFPGAN and models/Codeformer
    tiny GFPGAN and CodeFormer networks; models/BLIP a tiny captioning model.
    Tests that switch must switch back to the demo model.
    """
    from engine.models.loading import CONFIG_ROOT
    from engine.models.tiny_models import build_demo_pipeline
    from tests.support.lora_files import write_kohya_lora
    from tests.support.server import AppServer

    data = tmp_path_factory.mktemp("demo-server")
    tiny_models.reference_pipeline("sd1").save_pretrained(data / "models" / "Stable-diffusion" / "tiny-folder")
    (data / "models" / "Lora").mkdir(parents=True)
    write_kohya_lora(build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer"),
                     data / "models" / "Lora" / "glowing-edges.safetensors")
    (data / "models" / "ESRGAN").mkdir(parents=True)
    from safetensors.torch import save_file

    from tests.support.esrgan_files import tiny_rrdbnet
    save_file({k: v.contiguous() for k, v in tiny_rrdbnet(4).state_dict().items()},
              str(data / "models" / "ESRGAN" / "tiny-x4.safetensors"))
    from tests.support.face_model_files import write_codeformer_file, write_gfpgan_file
    write_gfpgan_file(data / "models" / "GFPGAN" / "GFPGANv1.4.pth")
    write_codeformer_file(data / "models" / "Codeformer" / "codeformer.pth")
    from tests.support.blip_files import write_tiny_blip
    write_tiny_blip(data / "models" / "BLIP" / "tiny-blip")
    for name in ("glow", "broken_import"):
        shutil.copytree(Path(__file__).parent / "support" / "extensions" / name, data / "extensions" / name)
    with AppServer(data, "--demo", "--api") as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (model files must load offline)."""
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
