"""Merging checkpoints as AUTOMATIC1111's Checkpoint Merger does, one tensor at a time.

Methods (M the multiplier): "Weighted sum" A*(1-M) + B*M, "Add difference" A + (B-C)*M, and
"No interpolation" (A as it is: to save it in half precision, with a VAE baked in or weights
discarded). Each result is computed in float64 from the stored values, then stored in A's type
(the wider of A's and B's and C's when they differ; float32 becomes float16 with "save as
float16", as A1111's to_half does). A weight of A that B (or C) lacks is kept from A, and said
so. An inpainting (9-channel) or instruct-pix2pix (8-channel) A merged with an ordinary model
merges the first 4 input channels of the UNet's first layer and keeps the others.

Inputs are read a piece at a time (plain file reads of .safetensors files; a pickle, allowed
only with --allow-unsafe-checkpoints, is memory-mapped), and the result is written to a
temporary file as it is made, then renamed: peak memory stays near one piece of each input and
one tensor, whatever the models' sizes. The file's metadata holds A1111's `sd_merge_recipe` and
`sd_merge_models`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import CheckpointError, NotFoundError, RequestError
from engine.files import TEMP_PREFIX, TEMP_SUFFIX
from engine.merge import vae_bake
from engine.merge.safetensors_stream import SafetensorsReader, SafetensorsWriter
from engine.families import recognise_flow_file
from engine.families.flux import FLUX
from engine.models.loading import (
    FAMILY_LABELS,
    UNET_IN,
    detect_layout,
    read_pickled_state_dict,
)
from engine.merge.merge_request import (
    ADD_DIFFERENCE,
    CONFIG_SOURCES,
    MergeBusyError,
    MergeRequest,
    MergeResult,
    MergeWriteError,
    NO_INTERPOLATION,
    NO_VAE,
    WEIGHTED_SUM,
    check_custom_name,
    discard_pattern,
    discards,
)
from engine.models.registry import CheckpointInfo, ModelRegistry

# A1111 never merges this one (integers counting 0..76, the same in every SD 1.x model).
SKIP_ON_MERGE = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
# Elements computed at once (in float64: 8 MiB per input).
CHUNK_ELEMENTS = 1024 * 1024
# Keys of a single-file FLUX.1 / SD 3.x checkpoint that are not its transformer's.
NOT_TRANSFORMER = ("text_encoders.", "vae.", "first_stage_model.", "cond_stage_model.", "conditioner.")
INPUT_CHANNEL_KINDS = {9: "inpainting", 8: "instruct-pix2pix"}

Progress = Callable[[int, int], None]


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: sha256 of the 64 KiB at 1 MiB into the file."""
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


class _Source:
    """One input checkpoint: its tensors' shapes and types, read a piece at a time."""

    def __init__(self, info: CheckpointInfo, role: str, field_name: str, allow_unsafe: bool):
        self.info, self.role, self.field = info, role, field_name
        self.path = Path(info.path)
        self._reader: SafetensorsReader | None = None
        self._state: dict | None = None
        self.metadata: dict[str, str] = {}
        if info.kind == "safetensors":
            self._reader = SafetensorsReader(self.path)
            self.shapes = {k: e.shape for k, e in self._reader.entries.items()}
            self.dtypes = {k: e.dtype for k, e in self._reader.entries.items()}
            self.metadata = self._reader.metadata
        elif info.kind == "pickle":
            state = read_pickled_state_dict(self.path, allow_unsafe)
            self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}
            self.dtypes = {k: v.dtype for k, v in self._state.items()}
        else:
            kinds = {"diffusers": "a diffusers folder", "gguf": "a quantised GGUF file",
                     "builtin": "the built-in demo model (it has no file)"}
            raise CheckpointError(f"{role} '{info.name}' is {kinds.get(info.kind, info.kind)}: only single-file "
                                  "checkpoints (.safetensors) can be merged", field_name)
        self.family, self.label = self._family()
        self.prefix = self._transformer_prefix()

    def _family(self) -> tuple[str, str]:
        shapes = self.shapes
        if UNET_IN in shapes:
            # An 8-channel (instruct-pix2pix) UNet is refused for generation, but merges as A1111's does.
            probe = dict(shapes)
            probe[UNET_IN] = (shapes[UNET_IN][0], 4, *shapes[UNET_IN][2:])
            layout = detect_layout(probe, self.info.name)
            return ("sdxl-refiner", "SDXL refiner") if layout.refiner else (layout.family, FAMILY_LABELS[layout.family])
        flow = recognise_flow_file(shapes)
        if flow is None:
            detect_layout(shapes, self.info.name)   # names what the file is instead
            raise CheckpointError(f"'{self.info.name}' is not a checkpoint this app can merge", self.field)
        if flow.family == FLUX.name and flow.variant in ("FLUX.1-dev", "FLUX.1-schnell"):
            return "flux", flow.variant   # dev and schnell share their transformer's shapes
        return f"{flow.family}:{flow.variant}", flow.variant

    def _transformer_prefix(self) -> str:
        if UNET_IN in self.shapes:
            return "model.diffusion_model."
        marked = any(k.startswith("model.diffusion_model.") for k in self.shapes)
        return "model.diffusion_model." if marked else ""

    def read(self, key: str) -> torch.Tensor:
        return self._reader.read(key) if self._reader else self._state[key]

    def read_flat(self, key: str, start: int, count: int) -> torch.Tensor:
        if self._reader:
            return self._reader.read_flat(key, start, count)
        if not self._state[key].is_contiguous():   # made contiguous once, not once per piece
            self._state[key] = self._state[key].contiguous()
        return self._state[key].reshape(-1)[start:start + count]

    def close(self) -> None:
        if self._reader:
            self._reader.close()
        self._state = None


def _translate(key: str, prefix_a: str, prefix_x: str) -> str:
    """A's key as another file names it: FLUX.1 / SD 3.x files keep the transformer bare or
    under model.diffusion_model."""
    if prefix_a == prefix_x:
        return key
    if prefix_a:
        return prefix_x + key[len(prefix_a):] if key.startswith(prefix_a) else key
    return key if key.startswith(NOT_TRANSFORMER) else prefix_x + key


@dataclass
class _Plan:
    """What becomes of each of A's keys, worked out before anything is written."""

    kind: str                     # "copy" | "merge" | "channels" | "vae"
    dtype: torch.dtype
    shape: tuple[int, ...]
    other: tuple[str, ...] = ()   # the key in B (and C)
    vae: vae_bake.VaeKey | None = None


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize >= 2


def _stored(dtype: torch.dtype, half: bool) -> torch.dtype:
    return torch.float16 if half and dtype == torch.float32 else dtype


class CheckpointMerger:
    """Merges checkpoints from the registry into a new file in its first folder, one merge at a time."""

    def __init__(self, registry: ModelRegistry, vaes, allow_unsafe: bool = False):
        self.registry = registry
        self.vaes = vaes   # engine.networks.vae.VaeLibrary: the VAE files one may bake in
        self.allow_unsafe = allow_unsafe
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        if not self.registry.folders:
            raise CheckpointError("There is no checkpoints folder to save the merged model in", "custom_name")
        return self.registry.folders[0]

    def merge(self, request: MergeRequest, progress: Progress | None = None) -> MergeResult:
        request = request.checked()
        if not self._lock.acquire(blocking=False):
            raise MergeBusyError("Another merge is running; try again when it has finished.")
        try:
            return self._merge(request, progress or (lambda done, total: None))
        finally:
            self._lock.release()

    def _find(self, name: str, field_name: str, role: str) -> CheckpointInfo:
        try:
            return self.registry.find(name)
        except NotFoundError as error:
            raise NotFoundError(f"{field_name}: {error.message}", field_name) from error

    def _vae(self, name: str):
        if name in ("", NO_VAE):
            return None
        found = self.vaes.find(name) if self.vaes is not None else None
        if found is None:
            names = ", ".join(v.name for v in self.vaes.files) if self.vaes is not None else ""
            raise NotFoundError(f"bake_in_vae: VAE not found: '{name[:100]}'. Available: {names or 'none in models/VAE'}",
                                "bake_in_vae")
        return found

    def _merge(self, request: MergeRequest, progress: Progress) -> MergeResult:
        roles = [("A", "primary_model_name", request.primary_model_name)]
        if request.interp_method != NO_INTERPOLATION:
            roles.append(("B", "secondary_model_name", request.secondary_model_name))
        if request.interp_method == ADD_DIFFERENCE:
            roles.append(("C", "tertiary_model_name", request.tertiary_model_name))
        infos = [self._find(name, field_name, role) for role, field_name, name in roles]
        vae = self._vae(request.bake_in_vae)
        sources: list[_Source] = []
        vae_reader = None
        try:
            for (role, field_name, _), info in zip(roles, infos):
                sources.append(_Source(info, role, field_name, self.allow_unsafe))
            self._check_families(sources)
            if vae is not None:
                vae_reader = SafetensorsReader(Path(vae.path))
            return self._write(request, sources, vae, vae_reader, progress)
        finally:
            for source in sources:
                source.close()
            if vae_reader is not None:
                vae_reader.close()

    @staticmethod
    def _check_families(sources: list[_Source]) -> None:
        a = sources[0]
        for other in sources[1:]:
            if other.family != a.family:
                raise CheckpointError(
                    f"Cannot merge models of different families: A '{a.info.name}' is {a.label}, "
                    f"{other.role} '{other.info.name}' is {other.label}. Choose models of one family.", other.field)

    def _output_path(self, request: MergeRequest, sources: list[_Source], suffix_kind: str | None) -> Path:
        name = request.custom_name or _default_name(request, [s.info for s in sources])
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        check_custom_name(name)
        if suffix_kind:
            name += f".{suffix_kind}"
        folder = self.folder.resolve()
        path = (folder / f"{name}.safetensors").resolve()
        if path.parent != folder:
            raise RequestError("custom_name must name a file directly in the checkpoints folder", "custom_name")
        if any(path == Path(s.info.path).resolve() for s in sources):
            raise RequestError(f"'{path.name}' is one of the models being merged: choose another custom_name",
                               "custom_name")
        if path.exists() and not request.overwrite:
            raise RequestError(f"'{path.name}' already exists in the checkpoints folder: choose another "
                               "custom_name, or ask to overwrite it", "custom_name")
        return path

    def _plan(self, request: MergeRequest, sources: list[_Source], vae_reader) -> tuple[dict, MergeResult]:
        a, others = sources[0], sources[1:]
        pattern = discard_pattern(request.discard_weights)
        result = MergeResult(Path(), CheckpointInfo("", "", "safetensors"), "", 0)
        plan: dict[str, _Plan] = {}
        half = request.save_as_half
        for key in sorted(a.shapes):
            if pattern is not None and discards(pattern, key):
                result.discarded.append(key)
                continue
            dtype, shape = a.dtypes[key], a.shapes[key]
            entry = _Plan("copy", _stored(dtype, half) if _is_float(dtype) else dtype, shape)
            plan[key] = entry
            if not others or not _is_float(dtype) or key in SKIP_ON_MERGE:
                continue
            names = tuple(_translate(key, a.prefix, o.prefix) for o in others)
            if any(n not in o.shapes for n, o in zip(names, others)):
                result.kept_from_a.append(key)
                continue
            if not all(_is_float(o.dtypes[n]) for n, o in zip(names, others)):
                continue
            wider = dtype
            for n, o in zip(names, others):
                wider = torch.promote_types(wider, o.dtypes[n])
            entry.dtype, entry.other = _stored(wider, half), names
            shapes = [o.shapes[n] for n, o in zip(names, others)]
            if all(s == shape for s in shapes):
                entry.kind = "merge"
            else:
                entry.kind = "channels"
                self._check_channels(key, a, others, names, result)
        if vae_reader is not None:
            result.baked = self._plan_vae(plan, a, vae_reader, half)
        return plan, result

    @staticmethod
    def _check_channels(key: str, a: _Source, others: list[_Source], names: tuple, result: MergeResult) -> None:
        """A1111's one allowed shape difference: the UNet's first layer of an inpainting (9) or
        instruct-pix2pix (8) A, against ordinary (4-channel) models."""
        shape = a.shapes[key]
        other_shapes = [o.shapes[n] for n, o in zip(names, others)]
        same_but_channels = all(len(s) == len(shape) and s[:1] + s[2:] == shape[:1] + shape[2:] for s in other_shapes)
        if key == UNET_IN and same_but_channels:
            if all(s[1] == 4 for s in other_shapes) and shape[1] in INPUT_CHANNEL_KINDS:
                if shape[1] == 9:
                    result.is_inpainting = True
                else:
                    result.is_instruct_pix2pix = True
                return
            wider = next((o for o, s in zip(others, other_shapes) if s[1] in INPUT_CHANNEL_KINDS), None)
            if wider is not None and shape[1] == 4:
                kind = INPUT_CHANNEL_KINDS[wider.shapes[UNET_IN][1]]
                raise CheckpointError(f"When merging an {kind} model with an ordinary one, A must be the {kind} "
                                      f"model: {wider.role} '{wider.info.name}' is the {kind} model.", "primary_model_name")
        differing = next(o for o, s in zip(others, other_shapes) if s != shape)
        raise CheckpointError(
            f"'{key}' has shape {list(shape)} in A '{a.info.name}' but {list(differing.shapes[_translate(key, a.prefix, differing.prefix)])} "
            f"in {differing.role} '{differing.info.name}': these models cannot be merged.", differing.field)

    @staticmethod
    def _plan_vae(plan: dict, a: _Source, vae_reader: SafetensorsReader, half: bool) -> int:
        prefix = "first_stage_model."
        if UNET_IN not in a.shapes:
            prefix = next((p for p in ("vae.", "first_stage_model.") if any(k.startswith(p) for k in a.shapes)), None)
            if prefix is None:
                raise CheckpointError(f"A '{a.info.name}' has no VAE to replace with the one to bake in", "bake_in_vae")
        name = vae_reader.path.name
        baked = 0
        for ldm_key, where in vae_bake.ldm_keys(list(vae_reader.entries)).items():
            key = prefix + ldm_key
            if key not in plan:
                continue
            entry = vae_reader.entries[where.source]
            shape = entry.shape + (1, 1) if where.as_conv else entry.shape
            if shape != plan[key].shape:
                raise CheckpointError(f"The VAE '{name}' does not fit A '{a.info.name}': '{key}' is "
                                      f"{list(shape)} in the VAE, {list(plan[key].shape)} in the checkpoint "
                                      "(a VAE of another model family?)", "bake_in_vae")
            plan[key] = _Plan("vae", _stored(entry.dtype, half), shape, vae=where)
            baked += 1
        if not baked:
            raise CheckpointError(f"'{name}' holds no VAE weights that A '{a.info.name}' has: it is not a VAE "
                                  "of this model's layout", "bake_in_vae")
        return baked

    def _write(self, request: MergeRequest, sources: list[_Source], vae, vae_reader, progress: Progress) -> MergeResult:
        plan, result = self._plan(request, sources, vae_reader)
        kind = "inpainting" if result.is_inpainting else "instruct-pix2pix" if result.is_instruct_pix2pix else None
        path = self._output_path(request, sources, kind)
        needed = sum(math.prod(p.shape) * p.dtype.itemsize for p in plan.values())
        free = shutil.disk_usage(path.parent).free
        if free < needed + 2**20:
            raise MergeWriteError(f"Not enough free disk space in the checkpoints folder for the merged model: it "
                                  f"needs {needed / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free.")
        metadata = self._metadata(request, sources, vae, result)
        try:
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        except OSError as error:
            raise MergeWriteError(f"Cannot write in the checkpoints folder {path.parent}: {error.strerror}") from error
        try:
            with os.fdopen(fd, "wb") as handle:
                writer = SafetensorsWriter(handle, {k: (p.dtype, p.shape) for k, p in plan.items()}, metadata)
                for done, (key, entry) in enumerate(plan.items(), 1):
                    self._write_tensor(writer, key, entry, request, sources, vae_reader)
                    progress(done, len(plan))
                writer.finish()
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException as error:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            if isinstance(error, OSError):
                raise MergeWriteError(f"Could not write the merged model '{path.name}': {error.strerror or error}; "
                                      "nothing was saved.") from error
            raise
        config = self._copy_config(request.config_source, sources, path)
        self.registry.refresh()
        listed = next((c for c in self.registry.checkpoints if Path(c.path) == path), None)
        checkpoint = self.registry.with_hash(listed) if listed else CheckpointInfo(path.name, str(path), "safetensors")
        result.path, result.checkpoint, result.tensors = path, checkpoint, len(plan)
        result.info = _describe(request, result, vae, config)
        return result

    @staticmethod
    def _write_tensor(writer: SafetensorsWriter, key: str, entry: _Plan, request: MergeRequest,
                      sources: list[_Source], vae_reader) -> None:
        a = sources[0]
        if entry.kind == "vae":
            value = vae_reader.read(entry.vae.source).reshape(entry.shape)
            writer.write(key, value.to(entry.dtype))
            return
        if entry.kind == "channels":
            merged = a.read(key).to(entry.dtype)   # one layer, of a few KiB: whole
            others = [o.read(n) for n, o in zip(entry.other, sources[1:])]
            merged[:, :4] = _combine(request, a.read(key)[:, :4], others).to(entry.dtype)
            writer.write(key, merged)
            return
        count = math.prod(entry.shape)
        for start in range(0, max(count, 1), CHUNK_ELEMENTS):
            size = min(CHUNK_ELEMENTS, count - start)
            piece = a.read_flat(key, start, size)
            if entry.kind == "merge":
                others = [o.read_flat(n, start, size) for n, o in zip(entry.other, sources[1:])]
                piece = _combine(request, piece, others)
            writer.write(key, piece.to(entry.dtype))

    def _metadata(self, request: MergeRequest, sources: list[_Source], vae, result: MergeResult) -> dict[str, str]:
        hashed = [self.registry.with_hash(s.info) for s in sources]
        by_role = {s.role: h.sha256 for s, h in zip(sources, hashed)}
        recipe = {
            "type": "webui",
            "primary_model_hash": by_role.get("A"),
            "secondary_model_hash": by_role.get("B"),
            "tertiary_model_hash": by_role.get("C"),
            "interp_method": request.interp_method,
            "multiplier": request.multiplier,
            "save_as_half": request.save_as_half,
            "custom_name": request.custom_name,
            "config_source": CONFIG_SOURCES.index(request.config_source),
            "bake_in_vae": vae.name if vae is not None else NO_VAE,
            "discard_weights": request.discard_weights,
            "is_inpainting": result.is_inpainting,
            "is_instruct_pix2pix": result.is_instruct_pix2pix,
        }
        models: dict = {}
        for source, info in zip(sources, hashed):
            models[info.sha256 or info.name] = {"name": info.name, "legacy_hash": legacy_hash(source.path),
                                                "sd_merge_recipe": _json_or_none(source.metadata.get("sd_merge_recipe"))}
            earlier = _json_or_none(source.metadata.get("sd_merge_models"))
            if isinstance(earlier, dict):
                models.update(earlier)
        return {"format": "pt", "sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}

    @staticmethod
    def _copy_config(choice: str, sources: list[_Source], path: Path) -> str | None:
        """The .yaml beside the model the choice names, copied beside the result; its name, or None."""
        by_role = {s.role: s for s in sources}
        order = {"A, B or C": ("A", "B", "C"), "B": ("B",), "C": ("C",)}.get(choice, ())
        for role in order:
            source = by_role.get(role)
            sidecar = source.path.with_suffix(".yaml") if source else None
            if sidecar is not None and sidecar.is_file():
                try:
                    shutil.copyfile(sidecar, path.with_suffix(".yaml"))
                except OSError as error:
                    return f"{sidecar.name} failed ({error.strerror}): the model was saved without it"
                return sidecar.name
        return None


def _combine(request: MergeRequest, a: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """The method's formula in float64, each step rounded as written (in place: copies only)."""
    m = request.multiplier
    a64 = a.to(torch.float64, copy=True)
    b64 = others[0].to(torch.float64, copy=True)
    if request.interp_method == WEIGHTED_SUM:
        return a64.mul_(1 - m).add_(b64.mul_(m))
    return a64.add_(b64.sub_(others[1].to(torch.float64)).mul_(m))


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _default_name(request: MergeRequest, infos: list[CheckpointInfo]) -> str:
    """A1111's names: "0.7(a) + 0.3(b)", "a + 0.3(b - c)", or A's name."""
    names = [info.model_name.replace("/", "_") for info in infos]
    m = request.multiplier
    if request.interp_method == WEIGHTED_SUM:
        return f"{round(1 - m, 2)}({names[0]}) + {round(m, 2)}({names[1]})"
    if request.interp_method == ADD_DIFFERENCE:
        return f"{names[0]} + {round(m, 2)}({names[1]} - {names[2]})"
    return names[0]


def _describe(request: MergeRequest, result: MergeResult, vae, config: str | None) -> str:
    lines = [f"Checkpoint saved to {result.path}"]
    if result.kept_from_a:
        missing = "B or C" if request.interp_method == ADD_DIFFERENCE else "B"
        shown = ", ".join(result.kept_from_a[:5]) + (", ..." if len(result.kept_from_a) > 5 else "")
        lines.append(f"{len(result.kept_from_a)} weights of A are not in {missing} and were kept from A: {shown}")
    if result.discarded:
        lines.append(f"{len(result.discarded)} weights matching '{request.discard_weights}' were discarded")
    if vae is not None:
        lines.append(f"VAE '{vae.name}' baked in ({result.baked} weights)")
    if result.is_inpainting or result.is_instruct_pix2pix:
        kind = "inpainting" if result.is_inpainting else "instruct-pix2pix"
        lines.append(f"The result is an {kind} model: the first 4 input channels of its UNet were merged")
    if config:
        lines.append(f"Config copied from {config}")
    return "\n".join(lines)
