"""The VAE / text encoder files a FLUX.1 / SD 3 checkpoint loads with, as the settings keep them:
Forge's `forge_additional_modules` (the choice in use, one for every checkpoint) and
`checkpoint_modules` (the choice remembered per checkpoint: its file name -> the files)."""

from __future__ import annotations

from typing import Any, Mapping

from engine.models.text_encoders import CHECKPOINT_MODULES_KEY, MODULES_JOIN, MODULES_KEY


def remembered_modules(settings: Mapping[str, Any], info) -> tuple[str, ...]:
    """The files checkpoint `info` loads with: those remembered for it, else the
    `forge_additional_modules` setting."""
    remembered = settings[CHECKPOINT_MODULES_KEY].get(info.name)
    if remembered is not None:
        return tuple(name for name in remembered.split(MODULES_JOIN) if name)
    return tuple(settings[MODULES_KEY])


def settings_after_load(settings: Mapping[str, Any], model, modules: tuple | None) -> dict[str, Any]:
    """The settings after a load that stays: the checkpoint, and its modules choice (kept for
    that checkpoint when it was given)."""
    changes: dict[str, Any] = {"sd_model_checkpoint": model.info.title}
    if model.is_flow:
        changes[MODULES_KEY] = list(model.modules_choice)
        if modules is not None:
            per_checkpoint = dict(settings[CHECKPOINT_MODULES_KEY])
            per_checkpoint[model.info.name] = MODULES_JOIN.join(model.modules_choice)
            changes[CHECKPOINT_MODULES_KEY] = per_checkpoint
    return changes
