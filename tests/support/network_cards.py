"""Folders of extra networks as users have them: LoRA files for each family, in nested folders,
with preview pictures, A1111's `name.json`, model-site `name.civitai.info` and kohya's ss_*
training metadata; written small (one tensor of the real key and width per file)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

# The cross-attention key input width of each UNet family (the text encoder's width).
WIDTHS = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
CROSS_KEY = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"


def lora_tensors(family: str) -> dict[str, torch.Tensor]:
    """The fewest tensors that say which family a LoRA is for, by the real key names."""
    if family == "flux":
        return {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 4),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(12, 2)}
    if family == "sd3":
        return {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(2, 4)}
    width = WIDTHS[family]
    return {f"{CROSS_KEY}.lora_down.weight": torch.zeros(2, width),
            f"{CROSS_KEY}.lora_up.weight": torch.zeros(4, 2),
            f"{CROSS_KEY}.alpha": torch.tensor(2.0)}


def write_lora(path: Path, family: str = "sd1", metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_tensors(family), str(path), metadata=metadata)
    return path


def png(color: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


FOLDERS = ("", "characters", "characters/anime", "styles", "styles/painterly/oil", "concepts")


def write_lora_tree(root: Path, count: int, families=("sd1", "sd1", "sdxl", "flux"), prefix: str = "net") -> list[dict]:
    """`count` LoRA files spread over FOLDERS, every 3rd with a preview (kinds of name in turn),
    every 4th with a name.json, every 5th with a civitai.info, every 2nd with ss_* metadata; their
    modification times one minute apart in name order. Returns what was written, per file."""
    written = []
    preview_names = ("{}.preview.png", "{}.png", "{}.jpg", "{}.webp")
    for i in range(count):
        folder = FOLDERS[i % len(FOLDERS)]
        name = f"{prefix}-{i:04d}-{('alpha', 'bravo', 'charlie', 'delta', 'echo')[i % 5]}"
        family = families[i % len(families)]
        metadata = None
        if i % 2 == 0:
            metadata = {"ss_output_name": f"alias{i:04d}", "ss_resolution": "(512, 512)",
                        "ss_tag_frequency": json.dumps({"10_set": {"tag a": 3 + i, "tag b": 1}}),
                        "ss_num_train_images": str(10 + i)}
        path = write_lora(root / folder / f"{name}.safetensors", family, metadata)
        record = {"name": name, "folder": folder, "family": family, "path": path, "metadata": metadata}
        if i % 3 == 0:
            pattern = preview_names[(i // 3) % len(preview_names)]
            preview = path.with_name(pattern.format(name))
            fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[preview.suffix[1:]]
            buffer = io.BytesIO()
            Image.new("RGB", (24, 32), ((i * 37) % 256, (i * 91) % 256, 160)).save(buffer, format=fmt)
            preview.write_bytes(buffer.getvalue())
            record["preview"] = preview
        if i % 4 == 0:
            user = {"description": f"description of {name}", "activation text": f"trigger{i}",
                    "preferred weight": 0.5 + (i % 3) / 10, "negative text": f"bad{i}", "sd version": "Unknown",
                    "notes": "kept"}
            path.with_name(f"{name}.json").write_text(json.dumps(user), encoding="utf-8")
            record["user"] = user
        if i % 5 == 0:
            info = {"trainedWords": [f"word{i}", "other"], "baseModel": "SD 1.5",
                    "description": "<p>from the site</p>", "model": {"name": f"Site name {i}"}}
            path.with_name(f"{name}.civitai.info").write_text(json.dumps(info), encoding="utf-8")
            record["civitai"] = info
        stamp = 1_700_000_000 + 60 * i
        os.utime(path, (stamp, stamp))
        record["mtime"] = stamp
        written.append(record)
    return written
