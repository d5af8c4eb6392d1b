"""Dedicated inpainting checkpoints (9-channel UNet) and img2img on the other families."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from engine.addons import AddOns
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.models.loading import detect_layout, read_shapes
from engine.files import HashCache
from engine.models.registry import ModelRegistry
from engine.output.writer import OutputWriter
from engine.models.pipelines import ModelManager
from engine.settings.store import Settings
from engine.models.tiny_models import build_tiny_pipeline
from tests.conftest import make_engine
from tests.support.ldm_export import export_single_file
from tests.test_img2img import BASE, ORIGINAL, change, square_mask
from tests.support.requests import with_fields


@pytest.fixture(scope="module")
def inpainting_engine(tiny_models, tmp_path_factory):
    """An engine whose only checkpoint is a tiny SD 1.x inpainting model, as a user's file."""
    root = tmp_path_factory.mktemp("inpainting-model")
    models_dir = root / "models" / "Stable-diffusion"
    models_dir.mkdir(parents=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_models.tokenizer_dir))
    pipe = build_tiny_pipeline("sd1", tokenizer, seed=7, unet_in_channels=9)
    export_single_file(pipe, models_dir / "tiny-sd1-inpainting.safetensors", "sd1")
    hashes = HashCache(root / "cache.json")
    manager = ModelManager(ModelRegistry([models_dir], hashes), DeviceConfig.choose(use_cpu=True),
                           config_root=tiny_models.config_root)
    engine = Engine(manager, OutputWriter(root / "outputs"), Settings(root / "config.json"),
                    AddOns.in_data_dir(root, hashes))
    engine.load_checkpoint("tiny-sd1-inpainting").outcome()
    yield engine, pipe
    engine.shutdown()


def test_nine_channel_checkpoint_is_detected_and_loads_with_its_weights(inpainting_engine, tiny_models):
    engine, reference = inpainting_engine
    model = engine.models.require()
    layout = detect_layout(read_shapes(Path(model.info.path), False), model.info.name)
    assert layout.unet_in_channels == 9
    assert model.is_inpainting
    assert torch.equal(model.base.unet.conv_in.weight, reference.unet.conv_in.weight)


def _unet_inputs(model) -> list[int]:
    """Channel counts the UNet is called with, recorded while a job runs."""
    seen = []
    handle = model.base.unet.conv_in.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    return seen, handle


def test_inpainting_model_gets_mask_and_masked_image(inpainting_engine):
    engine, _ = inpainting_engine
    model = engine.models.require()
    seen, handle = _unet_inputs(model)
    try:
        result = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask(), mask_blur=2))
    finally:
        handle.remove()
    assert seen and set(seen) == {9}
    diff = change(result.images[0], ORIGINAL)
    assert diff[:12].max() <= 1 and diff[28:36, 28:36].mean() > 20
    inpaint = model.pipeline_for("inpaint")
    assert inpaint.unet is model.base.unet and inpaint.vae is model.base.vae


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_inpainting_model_also_does_txt2img_and_img2img(inpainting_engine, mode):
    engine, _ = inpainting_engine
    request = with_fields(BASE, init_images=(ORIGINAL,)) if mode == "img2img" else \
        BASE.replace(mode="txt2img", img2img=None)
    first = engine.generate(request)
    assert first.images[0].size == (64, 64)
    assert first.images[0].tobytes() == engine.generate(request).images[0].tobytes()


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_img2img_and_inpaint_on_other_families(tiny_models, tmp_path, family):
    engine = make_engine(tiny_models, tmp_path, checkpoint=f"tiny-{family}")
    try:
        plain = engine.generate(with_fields(BASE, init_images=(ORIGINAL,)))
        assert plain.images[0].size == (64, 64)
        masked = engine.generate(with_fields(BASE, init_images=(ORIGINAL,), mask=square_mask(), mask_blur=2))
        diff = change(masked.images[0], ORIGINAL)
        assert diff[:12].max() <= 1 and np.mean(diff[28:36, 28:36]) > 20
        model = engine.models.require()
        assert model.pipeline_for("inpaint").unet is model.base.unet
    finally:
        engine.shutdown()
