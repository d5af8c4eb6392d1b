"""Reading textual-inversion embedding files from `models/embeddings`, without running their code.

Layouts accepted (what users download or train elsewhere):

- A1111 `.pt` / `.bin`: `{"string_to_param": {"*": tensor (n, dim)}, "string_to_token": ..., "name",
  "step", "sd_checkpoint", "sd_checkpoint_name"}`, or only `{"emb_params": tensor (n, dim)}`;
- `.safetensors`: `emb_params` (n, dim); SDXL's pair `clip_l` (n, 768) + `clip_g` (n, 1280); or a
  single tensor under any key;
- diffusers `learned_embeds.bin` / `.safetensors`: `{"<token>": tensor (dim,) or (n, dim)}`.

Pickled files are opened only with `torch.load(..., weights_only=True)`, which builds tensors and
plain containers and nothing else; a file that needs any other Python object to load is refused
with the name of that object, never loaded.

Vectors are keyed by text encoder:

- one-encoder files (SD 1.x with width 768, SD 2.x with 1024, ...): key `"single"`;
- SDXL files: keys `"clip_l"` (768) and `"clip_g"` (1280).

`compatible()` takes the loaded model's text-encoder widths in the same convention: `{"single": 768}`
for SD 1.x, `{"single": 1024}` for SD 2.x, `{"clip_l": 768, "clip_g": 1280}` for SDXL (a one-entry
dict under any other key is read as a one-encoder model too).

The name users type in prompts is the file name without its suffix. `sha256` is the whole file's;
`short_hash` its first 12 hex digits, which is what the ecosystem writes in the `TI hashes`
infotext field (`TI hashes: "name: 0123456789ab, ..."`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors")
SHORT_HASH_LENGTH = 12
SINGLE = "single"
CLIP_L = "clip_l"
CLIP_G = "clip_g"
# Real embeddings are kilobytes (75 vectors x 2048 floats is 600 KB); anything this big is a
# checkpoint or LoRA put in the wrong folder, and is not read into memory.
MAX_FILE_BYTES = 64 * 1024 * 1024

_FAMILY_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x"}


class EmbeddingFileError(UserError):
    """An embedding file that cannot be used: unreadable, refused, or a layout we do not know.

    `message` names the file; `reason` is the same without the file name."""

    status = 400

    def __init__(self, message: str, field: str | None = None, *, file_name: str | None = None,
                 reason: str | None = None):
        super().__init__(message, field)
        self.file_name = file_name
        self.reason = reason or message


@dataclass(frozen=True, eq=False)
class EmbeddingFile:
    """One embedding read from disk. Tensors are float32 on the CPU, shaped (vector_count, width)."""

    name: str
    path: Path
    vectors: dict[str, torch.Tensor]
    sha256: str
    layout: str  # "a1111", "emb_params", "sdxl", "diffusers" or "single tensor"
    token: str | None = None  # the diffusers placeholder token or A1111's stored name, if any
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata

    @property
    def short_hash(self) -> str:
        return self.sha256[:SHORT_HASH_LENGTH]

    @property
    def vector_count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def dims(self) -> dict[str, int]:
        return {key: int(tensor.shape[1]) for key, tensor in self.vectors.items()}

    @property
    def total_width(self) -> int:
        """The sum of the widths: what the ecosystem's API reports as an embedding's `shape`."""
        return sum(self.dims.values())

    @property
    def family(self) -> str | None:
        """"SD 1.x", "SD 2.x", "SDXL", or None when the widths match none of them."""
        dims = self.dims
        if set(dims) == {CLIP_L, CLIP_G}:
            return "SDXL" if (dims[CLIP_L], dims[CLIP_G]) == (768, 1280) else None
        return _FAMILY_BY_WIDTH.get(dims.get(SINGLE, 0))


# Reading


def _refuse(path: Path, reason: str) -> EmbeddingFileError:
    return EmbeddingFileError(f"Embedding file {path.name}: {reason}", file_name=path.name,
                              reason=reason)


def _as_vectors(value, path: Path, what: str) -> torch.Tensor:
    """A tensor as float32 (n, dim), or EmbeddingFileError saying what is wrong with it."""
    if not isinstance(value, torch.Tensor):
        raise _refuse(path, f"{what} is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise _refuse(path, f"{what} holds {value.dtype} values, not floating-point numbers")
    if value.dim() == 1:
        value = value.unsqueeze(0)
    if value.dim() != 2:
        raise _refuse(path, f"{what} has shape {tuple(value.shape)}; an embedding is (vectors, width)")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise _refuse(path, f"{what} is empty (shape {tuple(value.shape)})")
    value = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if not torch.isfinite(value).all():
        raise _refuse(path, f"{what} contains NaN or infinite values")
    return value


def _describe_keys(data: Mapping) -> str:
    keys = [str(key) for key in list(data)[:8]]
    more = f" and {len(data) - 8} more" if len(data) > 8 else ""
    return ", ".join(repr(key) for key in keys) + more if keys else "none"


def _interpret(data, path: Path) -> dict:
    """Pick the vectors out of a loaded file's contents; the fields for EmbeddingFile."""
    if isinstance(data, torch.Tensor):
        return {"vectors": {SINGLE: _as_vectors(data, path, "the tensor")}, "layout": "single tensor"}
    if not isinstance(data, Mapping):
        raise _refuse(path, f"holds a {type(data).__name__}, not the dict of tensors an embedding is")

    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or not params:
            raise _refuse(path, "its 'string_to_param' is not a dict of tensors")
        if "*" in params:
            tensor = params["*"]
        elif len(params) == 1:
            tensor = next(iter(params.values()))
        else:
            raise _refuse(path, f"its 'string_to_param' holds {len(params)} tensors "
                                f"({_describe_keys(params)}); expected one")
        step = data.get("step")
        name = data.get("name")
        checkpoint = data.get("sd_checkpoint")
        checkpoint_name = data.get("sd_checkpoint_name")
        return {
            "vectors": {SINGLE: _as_vectors(tensor, path, "'string_to_param'")},
            "layout": "a1111",
            "token": name if isinstance(name, str) else None,
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "sd_checkpoint": checkpoint if isinstance(checkpoint, str) else None,
            "sd_checkpoint_name": checkpoint_name if isinstance(checkpoint_name, str) else None,
        }

    if "emb_params" in data:
        return {"vectors": {SINGLE: _as_vectors(data["emb_params"], path, "'emb_params'")},
                "layout": "emb_params"}

    if CLIP_L in data or CLIP_G in data:
        if not (CLIP_L in data and CLIP_G in data):
            present, missing = (CLIP_L, CLIP_G) if CLIP_L in data else (CLIP_G, CLIP_L)
            raise _refuse(path, f"has SDXL's {present!r} vectors but not its {missing!r}")
        clip_l = _as_vectors(data[CLIP_L], path, f"'{CLIP_L}'")
        clip_g = _as_vectors(data[CLIP_G], path, f"'{CLIP_G}'")
        if clip_l.shape[0] != clip_g.shape[0]:
            raise _refuse(path, f"its '{CLIP_L}' has {clip_l.shape[0]} vectors but its '{CLIP_G}' "
                                f"has {clip_g.shape[0]}; they must match")
        return {"vectors": {CLIP_L: clip_l, CLIP_G: clip_g}, "layout": "sdxl"}

    tensors = [(key, value) for key, value in data.items() if isinstance(value, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:
        key, value = tensors[0]
        return {"vectors": {SINGLE: _as_vectors(value, path, f"{key!r}")}, "layout": "diffusers",
                "token": str(key)}
    raise _refuse(path, f"is not an embedding layout we know (keys: {_describe_keys(data)}); "
                        "expected 'string_to_param', 'emb_params', 'clip_l' + 'clip_g', "
                        "or a single tensor")


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _load_pickle(raw: bytes, path: Path):
    if not (raw.startswith(b"PK\x03\x04") or raw[:1] == b"\x80"):
        raise _refuse(path, "is not a PyTorch file (it is neither a torch zip archive nor a pickle)")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds here; every one means "not loadable"
        text = str(error)
        needed = _UNSUPPORTED_GLOBAL.search(text)
        if needed:
            raise _refuse(path, f"refused: loading it would need the Python object {needed.group(1)}, "
                                "and pickles that need more than tensors and plain containers can "
                                "run code, so they are not opened. Look for a .safetensors version "
                                "of this embedding.") from None
        if "Weights only load failed" in text:
            detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), "")
            raise _refuse(path, "refused: it is not a PyTorch save file that holds only tensors and "
                                f"plain containers{' (' + detail + ')' if detail else ''}") from None
        raise _refuse(path, f"cannot be read as a PyTorch file ({type(error).__name__}: "
                            f"{text.splitlines()[0] if text else 'no details'})") from None


def _load_safetensors(raw: bytes, path: Path) -> tuple[dict, dict[str, str]]:
    from safetensors.torch import load as load_safetensors

    if len(raw) < 8:
        raise _refuse(path, "is too short to be a .safetensors file")
    (header_length,) = struct.unpack("<Q", raw[:8])
    if header_length > len(raw) - 8:
        raise _refuse(path, "is not a .safetensors file (its header length is past the end of the file)")
    try:
        header = json.loads(raw[8:8 + header_length])
        metadata = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise _refuse(path, "is not a .safetensors file (its header is not JSON)") from None
    try:
        tensors = load_safetensors(raw)
    except Exception as error:
        raise _refuse(path, f"is a damaged .safetensors file ({error})") from None
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return tensors, metadata


def read_embedding(path: Path) -> EmbeddingFile:
    """Read one embedding file, or raise EmbeddingFileError naming the file and the reason."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise _refuse(path, f"has the suffix {path.suffix or '(none)'!r}; embeddings are "
                            + ", ".join(SUFFIXES))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _refuse(path, f"is {size / 2**20:.0f} MB, far too large for an embedding; "
                                "is it a checkpoint or LoRA in the wrong folder?")
        raw = path.read_bytes()
    except OSError as error:
        raise _refuse(path, f"cannot be read ({error.strerror or error})") from None
    if not raw:
        raise _refuse(path, "is empty")
    digest = hashlib.sha256(raw).hexdigest()

    metadata: dict[str, str] = {}
    if suffix == ".safetensors":
        data, metadata = _load_safetensors(raw, path)
    else:
        data = _load_pickle(raw, path)
    fields = _interpret(data, path)
    return EmbeddingFile(name=path.stem, path=path, sha256=digest, metadata=metadata, **fields)


# Scanning


def _candidate_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith(".") or Path(filename).suffix.lower() not in SUFFIXES:
                continue
            candidate = Path(dirpath) / filename
            if candidate.is_file():
                found.append(candidate)
    def order(candidate: Path):  # shallower files first, then by path
        relative = candidate.relative_to(folder)
        return (len(relative.parts), relative.as_posix().lower(), relative.as_posix())

    return sorted(found, key=order)


def scan_embeddings(folder: Path) -> tuple[list[EmbeddingFile], list[tuple[str, str]]]:
    """Every embedding under `folder` (sub-folders included, hidden files and folders not).

    Returns the readable ones sorted by name, and (path relative to `folder`, reason) for each file
    skipped. When two files have the same name (a prompt could not tell them apart) the one nearer
    the top of the folder is used, then the first in path order, and the others are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    loaded: dict[str, EmbeddingFile] = {}
    skipped: list[tuple[str, str]] = []
    for path in _candidate_files(folder):
        relative = path.relative_to(folder).as_posix()
        try:
            embedding = read_embedding(path)
        except EmbeddingFileError as error:
            log.warning("skipped embedding %s: %s", relative, error.reason)
            skipped.append((relative, error.reason))
            continue
        if embedding.name in loaded:
            first = loaded[embedding.name].path.relative_to(folder).as_posix()
            reason = f"another embedding named {embedding.name!r} was already loaded from {first}"
            log.warning("skipped embedding %s: %s", relative, reason)
            skipped.append((relative, reason))
            continue
        loaded[embedding.name] = embedding
    embeddings = sorted(loaded.values(), key=lambda e: (e.name.lower(), e.name))
    return embeddings, skipped


# Compatibility


def _width_label(width: int) -> str:
    family = _FAMILY_BY_WIDTH.get(width)
    return f"{width} ({family})" if family else str(width)


def compatible(embedding: EmbeddingFile, widths: Mapping[str, int]) -> str | None:
    """None when `embedding` can be used with a model whose text encoders have `widths`, else why not.

    `widths` follows the vector-key convention: `{"single": 768}` (SD 1.x), `{"single": 1024}`
    (SD 2.x), `{"clip_l": 768, "clip_g": 1280}` (SDXL). A one-entry dict under another key is taken
    as a one-encoder model.
    """
    dims = embedding.dims
    model = dict(widths)
    if set(model) == {CLIP_G}:  # the SDXL refiner: the clip_g half of an SDXL embedding
        if set(dims) != {CLIP_L, CLIP_G}:
            return "made for a one-encoder model; the SDXL refiner takes the clip_g half of an SDXL embedding"
        if dims[CLIP_G] != model[CLIP_G]:
            return f"clip_g width {dims[CLIP_G]} does not match this model's {model[CLIP_G]}"
        return None
    if len(model) == 1 and SINGLE not in model:
        model = {SINGLE: next(iter(model.values()))}
    model_is_sdxl = set(model) == {CLIP_L, CLIP_G}
    file_is_sdxl = set(dims) == {CLIP_L, CLIP_G}

    if set(model) == {SINGLE}:
        if file_is_sdxl:
            return "made for SDXL (a clip_l + clip_g pair); this model has one text encoder"
        if dims[SINGLE] != model[SINGLE]:
            return (f"vector width {_width_label(dims[SINGLE])} does not match this model's "
                    f"{_width_label(model[SINGLE])}")
        return None
    if model_is_sdxl:
        if not file_is_sdxl:
            family = _FAMILY_BY_WIDTH.get(dims[SINGLE], f"a one-encoder model of width {dims[SINGLE]}")
            return (f"made for {family}; SDXL needs an embedding with clip_l and clip_g vectors")
        mismatched = [f"{key} width {dims[key]} does not match this model's {model[key]}"
                      for key in (CLIP_L, CLIP_G) if dims[key] != model[key]]
        return "; ".join(mismatched) or None
    if set(dims) != set(model):
        return (f"the file has vectors for {', '.join(sorted(dims))} but this model's text encoders "
                f"are {', '.join(sorted(model)) or 'unknown'}")
    mismatched = [f"{key} width {dims[key]} does not match this model's {model[key]}"
                  for key in sorted(dims) if dims[key] != model[key]]
    return "; ".join(mismatched) or None
