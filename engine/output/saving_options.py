"""The "Saving images" settings: which images are saved, in what format, under which names and
in which folders. Keys are the ecosystem's, so client programs that set them work.

Folder settings can be changed by anyone who can reach the Settings tab or POST /sdapi/v1/options
(the UI may be shared on a LAN), so a folder must stay inside the data dir's `outputs` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import RequestError
from engine.option import Option

SECTION = "Saving images"
OUTPUTS = "outputs"  # the folder below the data dir that every saved image stays inside
FORMATS = ("png", "jpg", "webp")

# Folder keys and their defaults; relative paths are relative to the data dir.
FOLDER_DEFAULTS: dict[str, str] = {
    "outdir_samples": "",  # empty: each mode's own folder below
    "outdir_txt2img_samples": f"{OUTPUTS}/txt2img-images",
    "outdir_img2img_samples": f"{OUTPUTS}/img2img-images",
    "outdir_extras_samples": f"{OUTPUTS}/extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": f"{OUTPUTS}/txt2img-grids",
    "outdir_img2img_grids": f"{OUTPUTS}/img2img-grids",
}
# What --hide-ui-dir-config hides and keeps from being changed: where pictures go and their names.
DIRECTORY_KEYS: tuple[str, ...] = tuple(FOLDER_DEFAULTS) + ("samples_filename_pattern",
                                                             "directories_filename_pattern")


def resolve_folder(key: str, value: str, base: Path, jail: Path) -> Path:
    """Where folder setting `key` points (relative to `base`), or RequestError naming the key
    when it would leave `jail` ('..', an absolute path elsewhere, a symlink pointing out)."""
    def refuse(why: str) -> RequestError:
        return RequestError(f"Setting {key}: {why}; it must be a folder inside {OUTPUTS}/ "
                            f"(for example '{OUTPUTS}/my-images'), got {value!r}", key)

    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise refuse("control characters are not allowed in a folder name")
    path = Path(value)
    if ".." in path.parts or ".." in value.replace("\\", "/").split("/"):
        raise refuse("'..' is not allowed")
    try:
        # resolve() follows symlinks, so one pointing outside is judged by where it leads.
        inside, target = Path(jail).resolve(), (Path(base) / path).resolve()
    except (OSError, ValueError, RuntimeError) as error:  # a symlink loop, an odd name
        raise refuse(f"the path cannot be used ({error})")
    if target != inside and inside not in target.parents:
        raise refuse("it points outside the outputs folder")
    if target.exists() and not target.is_dir():
        raise refuse("a file of that name is in the way")
    return target


def _check_folder(key: str, value: str, data_dir: Path) -> None:
    # The default is where images have always gone; a symlink there was put by the machine's
    # owner (to another disk, say), so it is not second-guessed.
    if value in ("", FOLDER_DEFAULTS[key]):
        return
    resolve_folder(key, value, data_dir, Path(data_dir) / OUTPUTS)


def _folder(key: str, label: str) -> Option:
    return Option(key, FOLDER_DEFAULTS[key], label, SECTION, check=_check_folder)


SAVING_OPTIONS: tuple[Option, ...] = (
    Option("samples_save", True, "Always save all generated images", SECTION),
    Option("samples_format", "png", "File format for images", SECTION, choices=FORMATS),
    Option("samples_filename_pattern", "",
           "Images filename pattern (empty: [seed]); tags like [seed] [prompt_spaces] [model_name] "
           "[sampler] [steps] [cfg] [width] [height] [date] [datetime] [job_timestamp] [styles]",
           SECTION),
    Option("save_images_add_number", True, "Add number to filename when saving", SECTION),
    Option("grid_save", True, "Always save all generated image grids", SECTION),
    Option("grid_format", "png", "File format for grids", SECTION, choices=FORMATS),
    Option("save_txt", False, "Create a text file next to every image with its generation parameters",
           SECTION),
    Option("enable_pnginfo", True, "Write the generation parameters (infotext) into the images' "
           "metadata", SECTION),
    Option("save_images_before_face_restoration", False, "Also save each image as it was before face "
           "restoration", SECTION),
    Option("save_images_before_highres_fix", False, "Also save each image as it was before the hires "
           "fix pass", SECTION),
    Option("save_images_before_color_correction", False, "Also save each img2img image as it was "
           "before colour correction", SECTION),
    Option("jpeg_quality", 80, "Quality for saved jpeg and webp images", SECTION, minimum=1, maximum=100),
    Option("webp_lossless", False, "Use lossless compression for webp images", SECTION),
    Option("save_to_dirs", True, "Save images to a subdirectory", SECTION),
    Option("grid_save_to_dirs", True, "Save grids to a subdirectory", SECTION),
    Option("directories_filename_pattern", "[date]", "Directory name pattern", SECTION),
    _folder("outdir_samples", "Output directory for images; if empty, defaults to three directories below"),
    _folder("outdir_txt2img_samples", "Output directory for txt2img images"),
    _folder("outdir_img2img_samples", "Output directory for img2img images"),
    _folder("outdir_extras_samples", "Output directory for images from extras tab"),
    _folder("outdir_grids", "Output directory for grids; if empty, defaults to two directories below"),
    _folder("outdir_txt2img_grids", "Output directory for txt2img grids"),
    _folder("outdir_img2img_grids", "Output directory for img2img grids"),
)

SAVING_DEFAULTS: dict[str, Any] = {option.key: option.default for option in SAVING_OPTIONS}
