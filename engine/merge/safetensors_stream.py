"""Reading and writing .safetensors files a piece at a time.

The format: an 8-byte little-endian header length, a JSON header ({key: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the tensors' raw bytes (little
endian, C order), one after the other with no gaps. Reading with plain file reads (not a memory
map) keeps only what was asked for in memory; writing from a plan made up front (every key's
dtype and shape) lets each tensor go to disk as soon as it is made, so a merge never holds the
whole result.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
HEADER_LIMIT = 100 * 1024 * 1024   # safetensors' own limit on the JSON header
ALIGNMENT = 8                      # the header is padded with spaces to this (as safetensors writes it)


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in NAMES:
        raise CheckpointError(f"A tensor of type {dtype} cannot be written to a .safetensors file")
    return NAMES[dtype]


@dataclass(frozen=True)
class TensorEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int   # byte offsets in the data part
    end: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)


class SafetensorsReader:
    """The header of a .safetensors file, and its tensors read whole or as flat element ranges."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open until close(): pieces are read on demand)
        except OSError as error:
            raise CheckpointError(f"Cannot read '{self.path.name}': {error.strerror}", "checkpoint") from error
        try:
            self.entries, self.metadata, self._data_start = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _bad(self, why: str) -> CheckpointError:
        return CheckpointError(f"'{self.path.name}' is not a valid .safetensors file ({why}); it may be "
                               "incomplete or corrupt.", "checkpoint")

    def _read_header(self) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
        size = os.fstat(self._file.fileno()).st_size
        raw = self._file.read(8)
        if len(raw) < 8:
            raise self._bad("too short")
        length = struct.unpack("<Q", raw)[0]
        if length > min(HEADER_LIMIT, size - 8):
            raise self._bad("header length out of range")
        try:
            header = json.loads(self._file.read(length))
        except ValueError as error:
            raise self._bad("unreadable header") from error
        if not isinstance(header, dict):
            raise self._bad("unreadable header")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise self._bad("its metadata is not a table of texts")
        entries = {}
        data_size = size - 8 - length
        for key, value in header.items():
            try:
                dtype = DTYPES[value["dtype"]]
                shape = tuple(int(n) for n in value["shape"])
                begin, end = (int(n) for n in value["data_offsets"])
            except (KeyError, TypeError, ValueError) as error:
                raise self._bad(f"tensor '{key}' badly described") from error
            entry = TensorEntry(dtype, shape, begin, end)
            if not 0 <= begin <= end <= data_size or end - begin != entry.count * dtype.itemsize:
                raise self._bad(f"tensor '{key}' lies outside the file")
            entries[key] = entry
        return entries, {str(k): str(v) for k, v in metadata.items()}, 8 + length

    def read(self, key: str) -> torch.Tensor:
        entry = self.entries[key]
        return self.read_flat(key, 0, entry.count).reshape(entry.shape)

    def read_flat(self, key: str, start: int, count: int) -> torch.Tensor:
        """Elements [start, start + count) of the tensor in C order, as a 1-D tensor of its own."""
        entry = self.entries[key]
        size = entry.dtype.itemsize
        buffer = bytearray(count * size)
        self._file.seek(self._data_start + entry.begin + start * size)
        if self._file.readinto(buffer) != len(buffer):
            raise self._bad(f"tensor '{key}' is cut short")
        if not buffer:
            return torch.empty(0, dtype=entry.dtype)
        return torch.frombuffer(buffer, dtype=entry.dtype)

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SafetensorsWriter:
    """Writes a file whose keys, dtypes and shapes are known before any tensor is: the header
    first, then each tensor's bytes in the plan's order, as they are produced (write()), checked
    against the plan. Call finish() to check that every tensor was written."""

    def __init__(self, handle, plan: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        self._handle = handle
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._order = []
        for key, (dtype, shape) in plan.items():
            nbytes = math.prod(shape) * dtype.itemsize
            header[key] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((key, nbytes))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % ALIGNMENT)
        handle.write(struct.pack("<Q", len(text)) + text)
        self._next = 0          # index in _order of the tensor being written
        self._written = 0       # bytes of it written so far
        self.data_bytes = offset
        self._skip_empty()

    def _skip_empty(self) -> None:
        # Tensors with no elements take no bytes: nothing is written for them.
        while self._next < len(self._order) and self._order[self._next][1] == 0:
            self._next += 1

    @property
    def current_key(self) -> str | None:
        return self._order[self._next][0] if self._next < len(self._order) else None

    def write(self, key: str, piece: torch.Tensor) -> None:
        """The next piece (C order, the planned dtype) of tensor `key`."""
        if not piece.numel():
            return
        if key != self.current_key:
            raise RuntimeError(f"wrote '{key}' where '{self.current_key}' was due")
        data = piece.detach().contiguous().cpu()
        self._handle.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        self._written += data.numel() * data.element_size()
        expected = self._order[self._next][1]
        if self._written > expected:
            raise RuntimeError(f"'{key}': more bytes written than planned")
        if self._written == expected:
            self._next, self._written = self._next + 1, 0
            self._skip_empty()

    def finish(self) -> None:
        if self._next != len(self._order):
            raise RuntimeError(f"'{self.current_key}' was never written")
