"""Request and response bodies of the /sdapi/v1 API, with the ecosystem's field names and defaults.

Unknown fields are ignored, as client programs written for the mature web UIs send many. Every
text and list has a cap (a 422 names the field and the limit), so no caller can make the server
hold or store more than a real request needs.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.request import FIELD_RULES, MAX_BATCH_SIZE, MAX_PROMPT_CHARS, REFINER_SWITCH_RANGE
from engine.validation import Number, json_schema
from engine.settings.store import MAX_CHANGES

MAX_NAME_CHARS = 256  # sampler, upscaler, checkpoint, script and style names; task ids
MAX_INFOTEXT_CHARS = 2 * MAX_PROMPT_CHARS + 20_000  # two prompts and their parameters
MAX_IMAGE_CHARS = 512 * 1024 * 1024  # base64 of the largest picture file the upload limit can allow
MAX_LIST_ITEMS = 100  # styles, script arguments, extras batch pictures

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Image = Annotated[str, Field(max_length=MAX_IMAGE_CHARS)]


def documented_limits(schema: dict[str, Any]) -> None:
    """The generation bodies' schema with the engine's own limits (engine.request.FIELD_RULES):
    the engine checks them and names a bad value in its words, so the body only documents them."""
    rules = {**FIELD_RULES, "refiner_switch_at": Number(*REFINER_SWITCH_RANGE)}  # the refiner part's own
    for name, rule in rules.items():
        if name in schema.get("properties", {}):
            limits = json_schema(rule)
            limits.pop("multipleOf", None)  # the API takes any size and rounds it down to the grid
            schema["properties"][name].update(limits)


class Txt2ImgBody(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=documented_limits)

    prompt: str = ""  # the engine checks their length and names it in its own words
    negative_prompt: str = ""
    styles: list[Name] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Name | None = None
    sampler_index: Name | None = None
    scheduler: Name | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    # "CFG Rescale" phi: `rescale_cfg` is Forge's API name for it, `cfg_rescale` ours (the infotext's).
    rescale_cfg: float | None = None
    cfg_rescale: float | None = None
    # FLUX.1's guidance input (Forge's field; the model's own when left out) and the flow shift of FLUX.1 /
    # SD 3.x (0 or left out: the family's own, FLUX's growing with the picture's size).
    distilled_cfg_scale: float | None = Field(
        None, description="FLUX.1's guidance input (Forge's 'Distilled CFG Scale'; when left out, the model's "
        "own: 3.5 for FLUX.1-dev, 30 for FLUX.1 Fill). Keep cfg_scale at 1 for FLUX.1-dev")
    shift: float | None = Field(
        None, description="The flow shift of FLUX.1 / SD 3.x (0 or left out: the model's own: 3 for SD 3.x, "
        "for FLUX.1 growing with the picture's size). The VAE / text encoder files of a FLUX.1 / SD 3.x "
        "checkpoint are chosen with override_settings {\"forge_additional_modules\": [file names]}")
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict, max_length=MAX_CHANGES)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Name | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: Name | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Name | None = None
    hr_sampler_name: Name | None = None
    hr_scheduler: Name | None = None
    hr_prompt: Prompt = ""
    hr_negative_prompt: Prompt = ""
    force_task_id: Name | None = None
    script_name: Name | None = None
    script_args: list[Any] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, max_length=MAX_LIST_ITEMS)
    infotext: Annotated[str, Field(max_length=MAX_INFOTEXT_CHARS)] | None = None


class Img2ImgBody(Txt2ImgBody):
    init_images: list[Image] = Field(default_factory=list, max_length=MAX_BATCH_SIZE,
                                     description="base64 images (or data: URLs)")
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Image | None = Field(default=None, description="base64 mask image: white is repainted")
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Image | None = None
    include_init_images: bool = False


class ExtrasBaseBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, description="0: scale by upscaling_resize, 1: to upscaling_resize_w/h")
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: Name = "None"
    upscaler_2: Name = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleBody(ExtrasBaseBody):
    image: Image = Field("", description="base64 image (or data: URL)")


class ExtrasBatchImage(BaseModel):
    data: Image
    name: Name = ""


class ExtrasBatchBody(ExtrasBaseBody):
    imageList: list[ExtrasBatchImage] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)  # noqa: N815 (the ecosystem's name)


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class PngInfoBody(BaseModel):
    image: Image = Field(description="base64 image (or data: URL)")


class InterrogateBody(BaseModel):
    image: Image = Field(description="base64 image (or data: URL)")
    model: Name = Field("clip", description="'clip' (a BLIP caption) or 'deepdanbooru'")


class PngInfoResponse(BaseModel):
    info: str = Field(description="the infotext, empty when the image has none")
    items: dict[str, Any] = Field(description="other text stored in the image")
    parameters: dict[str, Any] = Field(description="the infotext read into its fields")


class ImagesResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="base64-encoded PNG images")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string with the generation details")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = ""
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 for the current job")
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None
    queue_position: int | None = Field(default=None, description="1-based place of a waiting job")


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None
    family: str | None = Field(
        None, description="The model family the checkpoint holds, read from its file header or folder: "
        "\"SD 1.x\", \"SD 2.x\", \"SDXL\", \"SDXL Refiner\", \"FLUX.1-dev\", \"FLUX.1-schnell\", "
        "\"SD 3.5 Large\", \"SD 3.5 Medium\", ...; null when it cannot be told without reading the whole "
        "file (a pickled checkpoint). An SD Studio addition: A1111 clients ignore it.")


class ErrorResponse(BaseModel):
    error: str
    detail: str
    field: str | None = None


class MergeBody(BaseModel):
    """POST /sdapi/v1/merge-checkpoints: A1111's Checkpoint Merger fields."""

    model_config = ConfigDict(extra="ignore")

    primary_model_name: Name = Field(description="Model A: a title, name or hash from /sd-models")
    secondary_model_name: Name | None = Field(None, description="Model B (Weighted sum, Add difference)")
    tertiary_model_name: Name | None = Field(None, description="Model C (Add difference)")
    interp_method: Name = Field("Weighted sum", description="'Weighted sum' A*(1-M)+B*M, 'Add difference' "
                                "A+(B-C)*M, or 'No interpolation' (A alone)")
    multiplier: float = Field(0.3, ge=0, le=1, description="M, from 0 to 1")
    save_as_half: bool = Field(False, description="Store float32 weights as float16")
    custom_name: Name = Field("", description="The new file's name (without .safetensors); empty: A1111's "
                              "name made from the models, method and multiplier")
    config_source: int | Name = Field(0, description="Copy the .yaml beside: 0 'A, B or C', 1 'B', 2 'C', 3 \"Don't\"")
    bake_in_vae: Name | None = Field("None", description="A VAE file from /sd-vae to bake in, or 'None'")
    discard_weights: Annotated[str, Field(max_length=1000)] = Field(
        "", description="A regular expression: weights whose names match it are left out")
    overwrite: bool = Field(False, description="Replace a file of the same name in the checkpoints folder")


class MergeResponse(BaseModel):
    filename: str
    title: str
    hash: str | None
    info: str
