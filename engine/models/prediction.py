"""What a checkpoint predicts and on which noise schedule, as the file tells it (or the user).

The ecosystem's markers, read without loading the weights:
- SDXL single files: a `v_pred` key means v-prediction, a `ztsnr` key a zero-terminal-SNR schedule
  (NoobAI-XL v-pred and other anime models; the keys ComfyUI and Forge read), `edm_mean` and
  `edm_std` the EDM formulation of Playground v2.5, with those tensors as its latents' mean and
  standard deviation (ComfyUI's reading of the same keys).
- SD 1.x / 2.x: a `.yaml` config beside the file, `parameterization: "v"` (or SGM's VScaling
  denoiser) for v-prediction, as A1111 and Forge read it. The zero-terminal-SNR ones carry no
  marker A1111 or Forge reads; diffusers' `rescale_betas_zero_snr: true` (or a `zero_snr`,
  `ztsnr` or `use_ztsnr: true`) anywhere in that yaml is taken as one.
- A diffusers folder: its scheduler's config (prediction_type, rescale_betas_zero_snr, an EDM
  scheduler class).
A file with no marker can be given its kind per checkpoint (the `checkpoint_prediction_overrides`
setting, OVERRIDE_CHOICES), and A1111's `sd_noise_schedule` setting turns zero terminal SNR on
for any model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.option import Option

log = logging.getLogger(__name__)

EPSILON, V_PREDICTION, EDM = "epsilon", "v_prediction", "edm"
# Rectified flow (FLUX.1, SD 3.x): x_t = (1 - t) x_0 + t noise, the transformer predicts the
# velocity noise - x_0; its noise levels are t itself, shifted (engine/sampling/flow_sigmas.py).
FLOW = "flow"
FLOW_LABEL = "flow matching"

# A1111's "Noise schedule for sampling" (sd_noise_schedule) and its infotext value.
DEFAULT_SCHEDULE, ZERO_TERMINAL_SNR = "Default", "Zero Terminal SNR"
NOISE_SCHEDULES = (DEFAULT_SCHEDULE, ZERO_TERMINAL_SNR)

AUTOMATIC = "Automatic"
EPSILON_LABEL = "epsilon"
V_LABEL = "v-prediction"
V_ZTSNR_LABEL = "v-prediction + zero terminal SNR"
EDM_LABEL = "EDM (Playground v2.5)"
OVERRIDE_CHOICES = (AUTOMATIC, EPSILON_LABEL, V_LABEL, V_ZTSNR_LABEL, EDM_LABEL)


@dataclass(frozen=True)
class LatentFormat:
    """How the UNet's latents relate to the VAE's: z = latents * std / scaling_factor + mean
    (diffusers' latents_mean / latents_std / scaling_factor of the VAE config)."""

    mean: tuple[float, ...] | None  # None (a VAE's own format): no shift, scaling_factor only
    std: tuple[float, ...] | None
    scaling_factor: float


@dataclass(frozen=True)
class EdmSchedule:
    """Karras et al.'s continuous noise levels (Playground v2.5: 0.002 to 80, sigma_data 0.5)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0


# Playground v2.5's latent statistics and scale, as its diffusers VAE config publishes them: what
# the EDM override uses for a file that does not carry edm_mean / edm_std.
PLAYGROUND_LATENTS = LatentFormat(mean=(-1.6574, 1.886, -1.383, 2.5155),
                                  std=(8.4927, 5.9022, 6.5498, 5.2299), scaling_factor=0.5)


@dataclass(frozen=True)
class ModelPrediction:
    """What the UNet predicts, on which schedule, and where that was learnt from."""

    prediction_type: str = EPSILON
    zero_snr: bool = False
    edm: EdmSchedule | None = None
    latents: LatentFormat | None = None  # None: the VAE's own
    source: str = "default"

    @property
    def label(self) -> str:
        """The override choice that means the same (for the UI)."""
        if self.prediction_type == EDM:
            return EDM_LABEL
        if self.prediction_type == FLOW:
            return FLOW_LABEL
        if self.prediction_type == V_PREDICTION:
            return V_ZTSNR_LABEL if self.zero_snr else V_LABEL
        return EPSILON_LABEL + (" + zero terminal SNR" if self.zero_snr else "")

    def describe(self) -> str:
        return f"{self.label} ({self.source})"


def from_file_keys(keys: Collection[str], tensor: Callable[[str], torch.Tensor]) -> ModelPrediction | None:
    """The markers among a single file's keys (`tensor(key)` reads one), or None when none is there."""
    if "edm_mean" in keys and "edm_std" in keys:
        mean, std = (tuple(float(v) for v in tensor(key).flatten()) for key in ("edm_mean", "edm_std"))
        latents = LatentFormat(mean, std, PLAYGROUND_LATENTS.scaling_factor) \
            if len(mean) == len(std) == 4 else PLAYGROUND_LATENTS
        return ModelPrediction(EDM, edm=EdmSchedule(), latents=latents, source="file keys edm_mean, edm_std")
    zero_snr = "ztsnr" in keys
    if "v_pred" in keys:
        return ModelPrediction(V_PREDICTION, zero_snr, source="file key v_pred" + (", ztsnr" if zero_snr else ""))
    if zero_snr:
        return ModelPrediction(EPSILON, True, source="file key ztsnr")
    return None


_ZERO_SNR_YAML_KEYS = ("rescale_betas_zero_snr", "zero_snr", "ztsnr", "use_ztsnr")


def from_sidecar(path: Path) -> ModelPrediction | None:
    """What a `.yaml` config beside the checkpoint says, or None without one."""
    import yaml  # only files with a sidecar need it

    sidecar = Path(path).with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        config = yaml.safe_load(sidecar.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as error:
        log.warning("%s is not valid YAML (%s); ignoring it", sidecar.name, str(error).splitlines()[0])
        return None
    params = _dig(config, "model", "params")
    scaling = str(_dig(params, "denoiser_config", "params", "scaling_config").get("target", ""))
    # Where LDM configs have it (model.params), or wherever a hand-made one put it.
    v = _finds(config, "parameterization", "v") or scaling.endswith(".VScaling")
    zero_snr = any(_finds(config, key, True) for key in _ZERO_SNR_YAML_KEYS)
    return ModelPrediction(V_PREDICTION if v else EPSILON, zero_snr, source=f"{sidecar.name}")


def _dig(tree, *keys) -> dict:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree if isinstance(tree, dict) else {}


def _finds(tree, key: str, wanted) -> bool:
    """Whether `key` holds `wanted` anywhere in a parsed YAML tree (True is not 1 here)."""
    if isinstance(tree, dict):
        here = key in tree and type(tree[key]) is type(wanted) and tree[key] == wanted
        return here or any(_finds(value, key, wanted) for value in tree.values())
    if isinstance(tree, list):
        return any(_finds(value, key, wanted) for value in tree)
    return False


def from_scheduler_config(config: Mapping, class_name: str = "") -> ModelPrediction:
    """What a diffusers scheduler config says (a diffusers folder, the built-in demo)."""
    class_name = class_name or str(config.get("_class_name", ""))
    if class_name.startswith("EDM"):
        schedule = EdmSchedule(float(config.get("sigma_min", 0.002)), float(config.get("sigma_max", 80.0)))
        return ModelPrediction(EDM, edm=schedule, source=f"scheduler {class_name}")
    prediction = config.get("prediction_type") or EPSILON
    if prediction not in (EPSILON, V_PREDICTION):
        prediction = EPSILON
    return ModelPrediction(prediction, bool(config.get("rescale_betas_zero_snr")), source="scheduler config")


def overridden(detected: ModelPrediction, choice: str) -> ModelPrediction:
    """The prediction with the user's per-checkpoint choice (AUTOMATIC: the detected one)."""
    if choice in ("", AUTOMATIC):
        return detected
    source = "override"
    if choice == EPSILON_LABEL:
        return ModelPrediction(EPSILON, source=source)
    if choice == V_LABEL:
        return ModelPrediction(V_PREDICTION, source=source)
    if choice == V_ZTSNR_LABEL:
        return ModelPrediction(V_PREDICTION, True, source=source)
    if choice == EDM_LABEL:
        return ModelPrediction(EDM, edm=EdmSchedule(), latents=PLAYGROUND_LATENTS, source=source)
    raise ValueError(f"unknown prediction override {choice!r}")


def override_for(overrides: Mapping[str, str], names: Collection[str | None]) -> str:
    """The override stored for a checkpoint under any of its names (title, file name, short
    hash), AUTOMATIC when none is."""
    for name in names:
        if name and name in overrides:
            return overrides[name]
    return AUTOMATIC


def with_override(overrides: Mapping[str, str], name: str, choice: str) -> dict[str, str]:
    """The overrides setting with checkpoint `name`'s choice (AUTOMATIC removes its entry)."""
    if choice not in OVERRIDE_CHOICES:
        raise ValueError(f"unknown prediction override {choice!r}")
    changed = {key: value for key, value in overrides.items() if key != name}
    if choice != AUTOMATIC:
        changed[name] = choice
    return changed


def in_effect(detected: ModelPrediction, override: str, noise_schedule: str) -> ModelPrediction:
    """What a job samples with: the override, then A1111's noise schedule setting (zero terminal
    SNR for any discrete-schedule model)."""
    prediction = overridden(detected, override)
    if noise_schedule == ZERO_TERMINAL_SNR and prediction.prediction_type != EDM and not prediction.zero_snr:
        prediction = dataclasses.replace(prediction, zero_snr=True)
    return prediction


OVERRIDES_KEY = "checkpoint_prediction_overrides"

PREDICTION_OPTIONS: tuple[Option, ...] = (
    Option("sd_noise_schedule", DEFAULT_SCHEDULE, "Noise schedule for sampling (Zero Terminal SNR: for "
           "models trained with it; those whose file says so use it anyway)", "Sampler parameters",
           choices=NOISE_SCHEDULES),
    # Per checkpoint (its file name, as the checkpoint list names it): for files with no marker.
    Option(OVERRIDES_KEY, {}, "Prediction type per checkpoint (for files that do not "
           "say; Automatic: as the file says)", "Stable Diffusion", choices=OVERRIDE_CHOICES),
)
