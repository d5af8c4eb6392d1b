"""Textual-inversion embeddings available to prompts: which files fit the loaded model.

Files are read (safely, see embedding_files) when the folder changes, and matched to the loaded
model by their vector widths: an SD 1.x embedding is listed as skipped under SDXL, and so on.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from engine.prompts.conditioning import EmbeddingIndex
from engine.networks.embedding_files import (
    CLIP_G,
    CLIP_L,
    SINGLE,
    EmbeddingFile,
    compatible,
    scan_embeddings,
)


def _signature(folders: list[Path]) -> tuple:
    """Cheap fingerprint of the folders' contents: names, sizes and times of every file."""
    entries = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for root, dirs, files in os.walk(folder, followlinks=True):
            for name in files:
                try:
                    stat = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                entries.append((root, name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def model_widths(model) -> dict[str, int]:
    pipe = model.base
    if model.is_refiner:  # the SDXL refiner: an SDXL embedding's clip_g vectors
        return {CLIP_G: pipe.text_encoder_2.config.hidden_size}
    if model.is_sdxl:
        return {CLIP_L: pipe.text_encoder.config.hidden_size,
                CLIP_G: pipe.text_encoder_2.config.hidden_size}
    return {SINGLE: pipe.text_encoder.config.hidden_size}


class EmbeddingLibrary:
    """All embedding files in the embedding folders; rescanned when they change."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._files: list[EmbeddingFile] = []
        self._unreadable: list[tuple[str, str]] = []
        self._index_cache: dict = {}

    def refresh(self) -> None:
        with self._lock:
            signature = _signature(self.folders)
            if signature == self._signature:
                return
            files: dict[str, EmbeddingFile] = {}
            unreadable: list[tuple[str, str]] = []
            for folder in self.folders:
                found, skipped = scan_embeddings(folder)
                for embedding in found:
                    files.setdefault(embedding.name, embedding)
                unreadable.extend(skipped)
            self._files = sorted(files.values(), key=lambda e: e.name.lower())
            self._unreadable = unreadable
            self._signature = signature
            self._index_cache.clear()

    def for_model(self, model) -> tuple[dict[str, EmbeddingFile], list[tuple[EmbeddingFile | str, str]]]:
        """(usable by name, [(embedding or file, why not)]) for the loaded model."""
        self.refresh()
        widths = model_widths(model)
        usable: dict[str, EmbeddingFile] = {}
        skipped: list = list(self._unreadable)
        for embedding in self._files:
            reason = compatible(embedding, widths)
            if reason is None:
                usable[embedding.name] = embedding
            else:
                skipped.append((embedding, reason))
        return usable, skipped

    def encoder_options(self, model) -> dict:
        """What PromptEncoder needs to put this model's embeddings into prompts."""
        usable, _ = self.for_model(model)
        if not usable:
            return {}
        key = (id(model), tuple(usable))
        with self._lock:
            index = self._index_cache.get(key)
            if index is None:
                index = EmbeddingIndex(model.base.tokenizer or model.base.tokenizer_2, usable,
                                       lambda e: e.vector_count)
                self._index_cache = {key: index}
        # The SDXL refiner has only the second (bigG) encoder.
        keys = (CLIP_G,) if model.is_refiner else (CLIP_L, CLIP_G) if model.is_sdxl else (SINGLE,)

        def vectors_for(embedding: EmbeddingFile, encoder_index: int):
            return embedding.vectors[keys[encoder_index]]

        return {"embeddings": index, "vectors_for": vectors_for}

    @staticmethod
    def hashes(used: dict[str, EmbeddingFile]) -> dict[str, str]:
        return {name: embedding.short_hash for name, embedding in used.items()}

    def api_listing(self, model) -> dict:
        """The shape GET /sdapi/v1/embeddings answers with."""
        if model is None:
            self.refresh()
            usable, skipped = {}, [(e, "no checkpoint is loaded") for e in self._files]
        else:
            usable, skipped = self.for_model(model)

        def describe(embedding: EmbeddingFile) -> dict:
            return {"step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
                    "sd_checkpoint_name": embedding.sd_checkpoint_name,
                    "shape": embedding.total_width, "vectors": embedding.vector_count}

        listing_skipped = {}
        for item, reason in skipped:
            if isinstance(item, EmbeddingFile):
                listing_skipped[item.name] = {**describe(item), "reason": reason}
            else:
                listing_skipped[Path(item).stem] = {"step": None, "sd_checkpoint": None,
                                                    "sd_checkpoint_name": None, "shape": None,
                                                    "vectors": None, "reason": reason}
        return {"loaded": {name: describe(e) for name, e in usable.items()}, "skipped": listing_skipped}
