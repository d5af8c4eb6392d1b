"""The model family seam (engine/families): each family module answers for its files -- how they
are recognised, which config folders and tokenizers load them offline, which parts a pipeline is
built from, the names LoRA files give its layers -- and the loaders, the LoRA code and the
checkpoint list ask it. A new flow-matching family is one module registered in FLOW_FAMILIES."""

from __future__ import annotations

import inspect
import json

import diffusers
import pytest
import torch

from engine import families
from engine.families import FLOW_FAMILIES, FlowModelFile
from engine.families.files import CLIP_L, T5
from engine.families.flow import FlowFamily
from engine.families.flux import FLUX
from engine.families.sd3 import SD3
from engine.families.stable_diffusion import SD1, SDXL
from engine.models.family_labels import family_label
from engine.models.loading import CONFIG_ROOT, detect_layout, read_shapes
from engine.models.registry import CheckpointInfo
from engine.models.tiny_flow_models import build_tiny_flow_components
from tests.support.flow_files import write_flow_file


@pytest.mark.parametrize("family", FLOW_FAMILIES, ids=lambda family: family.name)
def test_each_flow_variant_has_its_config_folder_with_the_parts_its_family_names(family):
    assert family.variants, family.name
    pipeline_parameters = None
    for variant, config_name in family.variants.items():
        folder = CONFIG_ROOT / config_name
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        assert transformer["_class_name"] == family.transformer_class, (variant, transformer["_class_name"])
        for part, component in family.text_encoder_components.items():
            assert (folder / component / "config.json").is_file(), (variant, part, component)
        for component in family.tokenizers:
            assert any((folder / component).iterdir()), (variant, component)
        assert (folder / "vae" / "config.json").is_file() and (folder / "scheduler").is_dir(), variant
        pipe_class = family.pipeline_class(FlowModelFile(family.name, variant, config_name, folder=True))
        pipeline_parameters = set(inspect.signature(pipe_class.__init__).parameters)
        # Every component the family builds is one the pipeline class takes.
        named = {"transformer", "vae", "scheduler", *family.text_encoder_components.values(), *family.tokenizers}
        assert named <= pipeline_parameters, (variant, named - pipeline_parameters)
    assert hasattr(diffusers, family.transformer_class)


@pytest.mark.parametrize("layout", ["flux-dev", "sd3.5-medium"])
def test_the_original_layer_names_reach_every_layer_of_the_transformer(layout):
    """The publisher's names a family lists (used to convert checkpoints and to apply LoRA
    files) cover every linear and convolution layer of its diffusers transformer, and name no
    layer that is not there except the ones a variant leaves out (SD 3.5's second attention after
    its first blocks, the last block's text stream)."""
    family = families.family_of(layout.split("-")[0].split(".")[0])
    model = build_tiny_flow_components(layout)["transformer"]
    named = dict(model.named_modules())
    targets = [target for _, layer in family.original_layers(model) for target in layer]
    weighted = {name for name, module in named.items() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    assert weighted <= set(targets), sorted(weighted - set(targets))[:5]
    last = f"transformer_blocks.{len(model.transformer_blocks) - 1}."
    absent = {target for target in targets if target not in named}
    assert all(".attn2." in target or target.startswith(last) for target in absent), sorted(absent)[:5]


def test_the_families_tell_what_a_lora_was_made_for_by_its_block_names():
    assert families.lora_made_for(["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]) == "flux"
    assert families.lora_made_for(["lora_unet_joint_blocks_3_x_block_attn_qkv.lora_down.weight"]) == "sd3"
    assert families.lora_made_for(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]) == "sd"
    assert families.lora_made_for(["lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"]) is None


def test_the_sd_families_recognise_their_layouts_and_name_what_a_file_is_not():
    unet = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    sd1 = {**unet, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)}
    xl = {**unet, "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280)}
    assert detect_layout(sd1, "a").family == SD1.name and detect_layout(sd1, "a").label == "SD 1.x"
    assert detect_layout(xl, "b").family == SDXL.name and detect_layout(xl, "b").config_name == "sdxl"
    with pytest.raises(Exception, match="no text encoder this app recognises"):
        detect_layout(unet, "c")


class _PatchFamily(FlowFamily):
    """A made-up next flow family ("Patch"): its transformer is told by `patch_blocks.0.attn.qkv`,
    it is prompted with T5 alone, and it has one variant with a config folder."""

    name, label = "patch", "Patch"
    variants = {"Patch-1": "patch-1"}
    text_encoder_components = {T5: "text_encoder"}
    vae_name = "the Patch VAE"
    lora_blocks = r"patch_blocks"
    marker = "patch_blocks.0.attn.qkv.weight"

    def variant_of(self, shapes, prefix):
        return "Patch-1"


def test_a_next_flow_family_is_recognised_everywhere_once_registered(monkeypatch, tmp_path):
    """Registering the family's module is all recognition needs: the loader's layout check, the
    checkpoint list's label and the LoRA check find it, and a file of it is described in its
    own words (what it holds, what must be picked beside it)."""
    patch = _PatchFamily()
    monkeypatch.setattr(families, "FLOW_FAMILIES", (*FLOW_FAMILIES, patch))
    monkeypatch.setitem(families.FAMILIES, patch.name, patch)
    path = write_flow_file(tmp_path / "patch1.safetensors",
                           {"patch_blocks.0.attn.qkv.weight": (6, 2), "patch_blocks.1.attn.qkv.weight": (6, 2)},
                           text_encoders=("t5xxl",))
    found = detect_layout(read_shapes(path, False), path.name)
    assert (found.family, found.variant, found.text_encoders) == ("patch", "Patch-1", (T5,))
    assert found.missing == ("the Patch VAE",) and found.missing_parts == ("VAE",)
    assert "a Patch-1 single file with the T5-XXL text encoder; it needs the Patch VAE" in found.describe()
    assert family_label(CheckpointInfo(name="patch1", path=str(path), kind="safetensors")) == "Patch-1"
    assert "Patch-1" in families.supported_flow_variants()
    assert families.lora_made_for(["lora_unet_patch_blocks_0_attn_qkv.lora_down.weight"]) == "patch"
    # The families before it are found as before.
    flux_file = write_flow_file(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (9, 3),
                                                               "guidance_in.in_layer.weight": (3, 2)})
    assert detect_layout(read_shapes(flux_file, False), "flux").family == FLUX.name
    assert SD3.variants and CLIP_L in FLUX.text_encoder_components
