"""The standard model files behind the names the ecosystem's web UI ships ("R-ESRGAN 4x+",
"SwinIR 4x", "GFPGAN", ...): the file name and folder it uses for each, where the file is
published, and its published sha256, which every download is checked against before it is used.

Downloads come only from this catalogue, never from a URL in a request, so a UI shared on a LAN
cannot be made to fetch anything else. The hosts can be replaced (mirrors, tests): GitHub
release URLs by SD_STUDIO_GITHUB_ENDPOINT, the Hugging Face ones by HF_ENDPOINT; the sha256 check
makes a mirror as trustworthy as the original.

Where the sha256 values come from (each cross-checked in at least two independent sources):
  Real-ESRGAN files, SwinIR_4x: OpenModelDB (data/models/4x-realesrgan-x4plus.json and its
    siblings, 4x-realSR-BSRGAN-DFOWMFC-s64w8-SwinIR-L-x4-GAN.json), and the download manifests
    of other public projects that pin the same release files;
  ESRGAN_4x (KAIR's ESRGAN.pth = the original RRDB_ESRGAN_x4.pth), ScuNET, GFPGANv1.4,
    codeformer.pth: download manifests of several public projects pinning these release files
    (one of them a resource checker for this very set of web UI files);
  v1-5-pruned-emaonly.safetensors: the Hugging Face repository's LFS pointer.

The live preview decoders (PREVIEW_DECODERS, the files the web UI's "TAESD" and "Approx NN"
previews fetch on first use):
  model.pt, vaeapprox-sdxl.pt: the web UI's v1.0.0-pre release assets (where it fetches them
    itself); the sha256 of each is pinned by a public download manifest of that release's files
    and matches the file as the web UI's own history carries it (model.pt: git blob 8bda9d6e,
    added by the commit "added cheap NN approximation for VAE"; vaeapprox-sdxl.pt: git blob
    085337fc, in two public repositories), 213 777 bytes each.
  taesd_decoder.pth, taesdxl_decoder.pth: madebyollin/taesd at the commit of TAESD 1.3 (the last
    change to both files). No sha256 of them is published anywhere we could find; the check is
    the publisher's own git blob id for each file (SHA-1 over "blob <size>\0" and the bytes,
    from the repository's tree at that commit), which pins the content just as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from engine.errors import UserError

ENDPOINTS = {"github": "https://github.com", "huggingface": "https://huggingface.co"}
ENDPOINT_ENV = {"github": "SD_STUDIO_GITHUB_ENDPOINT", "huggingface": "HF_ENDPOINT"}

UPSCALER, FACE, CHECKPOINT, PREVIEW = "upscaler", "face", "checkpoint", "preview"


@dataclass(frozen=True)
class CatalogueEntry:
    name: str           # what users pick, as the ecosystem names it
    kind: str           # UPSCALER, FACE, CHECKPOINT or PREVIEW
    folder: str         # under models/
    filename: str       # what a download is saved as (the ecosystem's own file name)
    path: str           # where it is published, after the host
    sha256: str         # "" where only git_blob_sha1 is published
    size: int | None    # bytes, as published (None: not published; see size_hint)
    host: str = "github"
    scale: int = 4      # as the ecosystem's /upscalers lists it
    aliases: tuple[str, ...] = ()   # other names the same file goes by on disk (also used)
    family: str | None = None       # the ecosystem's model_name for this kind of upscaler
    size_hint: str = ""             # what to say when the exact size is not published
    git_blob_sha1: str = ""         # the publisher's git blob id, for files with no published sha256

    @property
    def file_names(self) -> tuple[str, ...]:
        return (self.filename, *self.aliases)

    @property
    def where(self) -> str:
        return f"models/{self.folder}/{self.filename}"

    @property
    def checksum_label(self) -> str:
        return f"sha256 {self.sha256}" if self.sha256 else f"git blob {self.git_blob_sha1}"

    @property
    def size_label(self) -> str:
        if self.size is None:
            return self.size_hint or "size not published"
        return f"{self.size / 1e9:.1f} GB" if self.size >= 1e9 else f"{max(1, round(self.size / 1e6))} MB"


def _upscaler(name: str, folder: str, filename: str, path: str, sha256: str, size: int | None, **more) -> CatalogueEntry:
    return CatalogueEntry(name, UPSCALER, folder, filename, path, sha256, size, **more)


_REAL_ESRGAN = "xinntao/Real-ESRGAN/releases/download"
STANDARD: tuple[CatalogueEntry, ...] = (
    _upscaler("R-ESRGAN 4x+", "RealESRGAN", "RealESRGAN_x4plus.pth", f"{_REAL_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth",
              "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67_040_989),
    _upscaler("R-ESRGAN 4x+ Anime6B", "RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth",
              f"{_REAL_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
              "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", 17_938_799),
    _upscaler("R-ESRGAN General 4xV3", "RealESRGAN", "realesr-general-x4v3.pth",
              f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-x4v3.pth",
              "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", 4_885_111),
    _upscaler("R-ESRGAN General WDN 4xV3", "RealESRGAN", "realesr-general-wdn-x4v3.pth",
              f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
              "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca", 4_885_111),
    _upscaler("R-ESRGAN AnimeVideo", "RealESRGAN", "realesr-animevideov3.pth",
              f"{_REAL_ESRGAN}/v0.2.5.0/realesr-animevideov3.pth",
              "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d", 2_504_012),
    _upscaler("R-ESRGAN 2x+", "RealESRGAN", "RealESRGAN_x2plus.pth", f"{_REAL_ESRGAN}/v0.2.1/RealESRGAN_x2plus.pth",
              "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", 67_061_725, scale=2),
    # The original ESRGAN in its old key layout; the web UI saves it under this name.
    _upscaler("ESRGAN_4x", "ESRGAN", "ESRGAN_4x.pth", "cszn/KAIR/releases/download/v1.0/ESRGAN.pth",
              "65fece06e1ccb48853242aa972bdf00ad07a7dd8938d2dcbdf4221b59f6372ce", None,
              aliases=("RRDB_ESRGAN_x4.pth",), family="ESRGAN_4x",
              size_hint="about 67 MB"),  # 16.7 M float32 weights; no source gives the byte count
    _upscaler("SwinIR 4x", "SwinIR", "SwinIR_4x.pth",
              "JingyunLiang/SwinIR/releases/download/v0.0/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
              "99adfa91350a84c99e946c1eb3d8fce34bc28f57d807b09dc8fe40a316328c0a", 142_473_939,
              aliases=("003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",), family="SwinIR 4x"),
    # A denoiser (scale 1); the web UI lists it as 4 and saves the GAN one as ScuNET.pth.
    _upscaler("ScuNET GAN", "ScuNET", "ScuNET.pth", "cszn/KAIR/releases/download/v1.0/scunet_color_real_gan.pth",
              "892c83f812c59173273b74f4f34a14ecaf57a2fdb68df056664589beb55c966e", 71_982_835,
              aliases=("scunet_color_real_gan.pth",), family="ScuNET GAN"),
    _upscaler("ScuNET PSNR", "ScuNET", "scunet_color_real_psnr.pth",
              "cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth",
              "fa78899ba2caec9d235a900e91d96c689da71c42029230c2028b00f09f809c2e", 71_982_841,
              aliases=("ScuNET PSNR.pth",), family="ScuNET GAN"),
    CatalogueEntry("GFPGAN", FACE, "GFPGAN", "GFPGANv1.4.pth", "TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
                   "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348_632_874),
    CatalogueEntry("CodeFormer", FACE, "Codeformer", "codeformer-v0.1.0.pth",
                   "sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
                   "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", 376_637_898,
                   aliases=("codeformer.pth",)),
    CatalogueEntry("Stable Diffusion 1.5 (v1-5-pruned-emaonly)", CHECKPOINT, "Stable-diffusion",
                   "v1-5-pruned-emaonly.safetensors",
                   "stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
                   "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", 4_265_146_304,
                   host="huggingface"),
)
SD15_NAME = STANDARD[-1].name

# The live preview decoders, found in (and downloaded into) models/VAE-approx. The web UI keeps
# the TAESD ones in models/VAE-taesd; engine/models/preview_models.py looks there too.
_TAESD_AT = "madebyollin/taesd/raw/7f572ca629c9b0d3c9f71140e5f501e09f9ea280"
_WEBUI_RELEASE = "AUTOMATIC1111/stable-diffusion-webui/releases/download/v1.0.0-pre"
PREVIEW_DECODERS: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("TAESD decoder (SD 1.x, 2.x)", PREVIEW, "VAE-approx", "taesd_decoder.pth",
                   f"{_TAESD_AT}/taesd_decoder.pth", "", None, size_hint="about 5 MB",
                   git_blob_sha1="5915a429fc08eba4adf62bf74f96705b8b0d5c1f"),
    CatalogueEntry("TAESD decoder (SDXL)", PREVIEW, "VAE-approx", "taesdxl_decoder.pth",
                   f"{_TAESD_AT}/taesdxl_decoder.pth", "", None, size_hint="about 5 MB",
                   git_blob_sha1="477bc7e9604f418029508e72ac8719bb9d048291"),
    CatalogueEntry("Approx NN (SD 1.x, 2.x)", PREVIEW, "VAE-approx", "model.pt",
                   f"{_WEBUI_RELEASE}/model.pt",
                   "4f88c9078bb2238cdd0d8864671dd33e3f42e091e41f08903f3c15e4a54a9b39", 213_777),
    CatalogueEntry("Approx NN (SDXL)", PREVIEW, "VAE-approx", "vaeapprox-sdxl.pt",
                   f"{_WEBUI_RELEASE}/vaeapprox-sdxl.pt",
                   "6c8db511f910184436a613807ce06a729f4cf96bbf7977c7c6c40d5b3e4a8333", 213_777),
)


class ModelCatalogue:
    """The entries, and the hosts their files are fetched from."""

    def __init__(self, entries: Iterable[CatalogueEntry] = STANDARD + PREVIEW_DECODERS,
                 endpoints: Mapping[str, str | None] | None = None):
        self._entries = {entry.name: entry for entry in entries}
        self.endpoints = {**ENDPOINTS, **{k: v for k, v in (endpoints or {}).items() if v}}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "ModelCatalogue":
        return cls(endpoints={host: environ.get(variable) for host, variable in ENDPOINT_ENV.items()})

    def get(self, name: str) -> CatalogueEntry | None:
        return self._entries.get(name)

    def of_kind(self, kind: str) -> list[CatalogueEntry]:
        return [entry for entry in self._entries.values() if entry.kind == kind]

    def url(self, entry: CatalogueEntry) -> str:
        return f"{self.endpoints[entry.host].rstrip('/')}/{entry.path}"

    def replaced(self, name: str, **changes) -> "ModelCatalogue":
        """A copy with one entry changed: for tests, which serve their own files (and their
        sha256) from a local stand-in host."""
        entries = [replace(entry, **changes) if entry.name == name else entry for entry in self._entries.values()]
        return ModelCatalogue(entries, self.endpoints)


class ModelNotDownloaded(UserError):
    """A standard model a request names has no file on disk yet. The UI offers the download; the
    API downloads it itself when the `auto_download_models` setting allows. 409: the request is
    sound, but the server lacks the file it needs."""

    status = 409

    def __init__(self, entries: Iterable[CatalogueEntry], catalogue: ModelCatalogue, field: str | None = None):
        self.entries = tuple(entries)
        parts = [f"'{e.name}' needs {e.filename} ({e.size_label}) in models/{e.folder}, which is not there yet "
                 f"(it is published at {catalogue.url(e)}, {e.checksum_label})" for e in self.entries]
        super().__init__("; ".join(parts) + ". Download it with the Download button, put the file there "
                         "yourself, or turn on the setting auto_download_models to let API requests "
                         "download it.", field)
