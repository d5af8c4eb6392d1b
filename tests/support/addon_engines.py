"""An engine sharing the session engine's model, settings and queue, with add-on files of its own
(a LoRA, a tiny ControlNet made for the loaded UNet) in a folder of the test's."""

from __future__ import annotations

from pathlib import Path

from engine.addons import AddOns
from engine.controlnet.tiny_controlnets import build_tiny_controlnet, save_original_layout
from engine.engine import Engine
from engine.memory.memory_guard import FaultPlan
from engine.files import HashCache
from tests.support.lora_files import write_kohya_lora


def engine_over(engine: Engine, data: Path) -> Engine:
    """An engine over the session engine's model, settings and queue that finds its add-ons in `data`."""
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data, HashCache(data / "cache.json")), queue=engine.queue)


def engine_with_addons(engine: Engine, data: Path, lora: str, controlnet: str, controlnet_seed: int = 1,
                       faults: FaultPlan | None = None) -> Engine:
    """`data`/models/Lora/<lora>.safetensors and `data`/models/ControlNet/<controlnet>.safetensors
    written for the loaded model; an engine that finds them (and fires `faults`, a test's plan
    of memory faults)."""
    pipe = engine.models.require().base
    (data / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    write_kohya_lora(pipe, data / "models" / "Lora" / f"{lora}.safetensors")
    save_original_layout(build_tiny_controlnet(pipe.unet, seed=controlnet_seed),
                         data / "models" / "ControlNet" / f"{controlnet}.safetensors")
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data, HashCache(data / "cache.json"), faults=faults), queue=engine.queue)
