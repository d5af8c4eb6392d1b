"""Extra networks as cards, beside the prompt of txt2img and img2img, as in A1111's web UI.

A button under the prompts opens a panel with sub-tabs Checkpoints, Textual Inversion and Lora.
Each grid is rendered once as HTML (gr.HTML) when the panel opens; searching, sorting, the
folder filter and the card size are the browser's (ui/assets/extra_networks.js), so 2,000 cards
stay quick, and thumbnails load lazily from /sd_extra_networks/thumb. A click on a card puts
its text in the prompt at the cursor (or takes it out again); a checkpoint card switches the
checkpoint; the card's edit button opens the metadata editor, saved as A1111's `name.json`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import gradio as gr

from engine.errors import UserError
from engine.networks.network_catalogue import (
    CHECKPOINT,
    EMBEDDING,
    KINDS,
    LORA,
    NetworkEntry,
)
from engine.networks.network_files import (
    FAMILY_NAMES,
    SD_VERSIONS,
    USER_KEYS,
    civitai_words,
    preferred_weight,
)

from .context import UIContext
from .number_inputs import Number

PRIVATE = {"api_visibility": "private"}
LABELS = {CHECKPOINT: "Checkpoints", EMBEDDING: "Textual Inversion", LORA: "Lora"}
DEFAULT_CARD = (180, 240)
TRAINING_KEYS = (("ss_base_model_version", "Base model"), ("ss_sd_model_name", "Trained on"),
                 ("ss_resolution", "Resolution"), ("ss_num_train_images", "Training images"),
                 ("ss_num_epochs", "Epochs"), ("ss_network_dim", "Network dim"),
                 ("ss_network_alpha", "Network alpha"), ("ss_learning_rate", "Learning rate"),
                 ("ss_training_started_at", "Started"))


def sync_checkpoints(ctx: UIContext) -> None:
    """Tell the catalogue the checkpoints the model registry lists (the built-in demo has no file)."""
    registry = ctx.registry
    ctx.engine.addons.networks.set_checkpoints(
        registry.folders, [(c.title, Path(c.path)) for c in registry.checkpoints if c.path])


def _attr(text: str) -> str:
    """Text for an attribute or element: HTML-escaped, and without the characters Gradio's
    HTML template would read as its own (`${`, `{{`)."""
    return html.escape(str(text), quote=True).replace("{", "&#123;").replace("}", "&#125;") \
        .replace("$", "&#36;").replace("`", "&#96;")


def _weight_text(value: float) -> str:
    return f"{value:g}"


def lora_reference(entry: NetworkEntry, prefer_alias: bool, taken: dict[str, int]) -> str:
    """The name a LoRA card writes: its alias when the setting says so and no other file has
    that name or alias (the prompt would then mean another file), else the file name."""
    if prefer_alias and entry.alias != entry.name and taken.get(entry.alias, 0) == 1:
        return entry.alias
    return entry.name


def card_texts(entry: NetworkEntry, settings, reference: str) -> dict[str, str]:
    """What a click adds: the prompt text, the activation text, the negative text, and how the
    page recognises the card's text already in the prompt (a second click takes it out)."""
    user = entry.user
    activation = str(user.get("activation text") or "")
    negative = str(user.get("negative text") or "")
    if entry.kind == LORA:
        weight = preferred_weight(user) or float(settings["extra_networks_default_multiplier"])
        return {"prompt": f"<lora:{reference}:{_weight_text(weight)}>", "activation": activation,
                "negative": negative, "match": f"<lora:{reference}:", "match2": f"<lora:{entry.name}:"}
    if entry.kind == EMBEDDING:
        return {"prompt": entry.name, "activation": activation, "negative": negative, "match": "", "match2": ""}
    return {"prompt": "", "activation": "", "negative": "", "match": "", "match2": ""}


def _thumb_url(entry: NetworkEntry) -> str | None:
    relative = entry.preview_relative
    if relative is None or entry.preview is None:
        return None
    try:
        stamp = int(entry.preview.stat().st_mtime)
    except OSError:
        stamp = 0
    return f"sd_extra_networks/thumb?kind={entry.kind}&file={quote(relative)}&mtime={stamp}"


def _card(entry: NetworkEntry, texts: dict[str, str], compatible: bool) -> str:
    description = str(entry.user.get("description") or "")
    words = civitai_words(entry.civitai)
    search = " ".join([entry.name, entry.alias, entry.folder, description, texts["activation"], words]).lower()
    thumb = _thumb_url(entry)
    picture = (f'<img class="en-thumb" loading="lazy" decoding="async" alt="" src="{_attr(thumb)}">' if thumb
               else f'<div class="en-thumb en-nopreview">{_attr(entry.name[:2].upper())}</div>')
    family = FAMILY_NAMES.get(entry.family or "", "")
    classes = "en-card" + ("" if compatible else " en-incompatible")
    data = {"name": entry.name, "path": entry.relative, "folder": entry.folder, "search": search,
            "family": "" if entry.kind == CHECKPOINT else entry.family or "",
            "mtime": f"{entry.mtime:.0f}", "size": str(entry.size), "title": entry.title, **texts}
    attributes = " ".join(f'data-{key}="{_attr(value)}"' for key, value in data.items())
    tooltip = f"{entry.relative}" + (f" ({family})" if family else "") + ("" if compatible else
                                                                          ": made for another model family")
    return (f'<div class="{classes}" {attributes} title="{_attr(tooltip)}" tabindex="0" role="button">{picture}'
            f'<div class="en-label"><span class="en-name">{_attr(entry.name)}</span>'
            + (f'<span class="en-family">{_attr(family)}</span>' if family else "")
            + (f'<span class="en-desc">{_attr(description[:300])}</span>' if description else "")
            + '</div><button type="button" class="en-edit" title="Edit metadata" aria-label="Edit metadata">'
            "&#9998;</button></div>")


def _folder_options(entries: list[NetworkEntry]) -> str:
    folders: set[str] = set()
    for entry in entries:
        parts = entry.folder.split("/") if entry.folder else []
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    options = ['<option value="">All folders</option>']
    for folder in sorted(folders, key=str.lower):
        depth = folder.count("/")
        label = "\u00a0\u00a0" * depth + folder.rsplit("/", 1)[-1]
        options.append(f'<option value="{_attr(folder)}">{_attr(label)}</option>')
    return "".join(options)


def compatible(entry: NetworkEntry, loaded: str | None) -> bool:
    """Whether a network fits the loaded checkpoint's family (unknown on either side: it may)."""
    return entry.kind == CHECKPOINT or not loaded or not entry.family or entry.family == loaded


def cards_html(ctx: UIContext, tab: str, kind: str) -> str:
    """The grid of one kind with its tool bar, for one tab."""
    settings = ctx.settings
    if kind == CHECKPOINT:
        sync_checkpoints(ctx)
    entries = sorted(ctx.engine.addons.networks.entries(kind), key=lambda e: e.name.lower())
    model = ctx.models.current
    loaded = model.family if model is not None else None
    taken: dict[str, int] = {}
    for entry in entries:
        for name in {entry.name, entry.alias}:
            taken[name] = taken.get(name, 0) + 1
    prefer_alias = settings["lora_preferred_name"] == "Alias from file"
    cards = "".join(_card(entry, card_texts(entry, settings, lora_reference(entry, prefer_alias, taken)),
                          compatible(entry, loaded)) for entry in entries)
    width = int(settings["extra_networks_card_width"]) or DEFAULT_CARD[0]
    height = int(settings["extra_networks_card_height"]) or DEFAULT_CARD[1]
    hide = " en-hide-incompatible" if settings["extra_networks_hide_incompatible"] else ""
    hide += "" if kind == CHECKPOINT else " en-by-family"
    empty = "" if entries else f'<div class="en-empty">No {LABELS[kind].lower()} found.</div>'
    return (f'<div class="en-pane{hide}" id="{tab}_{kind}_cards" data-tab="{tab}" data-kind="{kind}" '
            f'data-separator="{_attr(settings["extra_networks_add_text_separator"])}" '
            f'style="--en-card-w:{width}px;--en-card-h:{height}px">'
            '<div class="en-toolbar">'
            f'<input type="search" class="en-search" placeholder="Search {_attr(LABELS[kind])}" aria-label="Search">'
            '<select class="en-sort" aria-label="Sort by"><option value="name">Name</option>'
            '<option value="date">Date modified</option><option value="size">Size</option></select>'
            '<button type="button" class="en-order" data-order="asc" title="Ascending / descending">&#9650;</button>'
            f'<select class="en-folder" aria-label="Folder">{_folder_options(entries)}</select>'
            f'<span class="en-count">{len(entries)}</span></div>'
            f'<div class="en-grid">{cards}</div>{empty}</div>')


def _training_summary(entry: NetworkEntry) -> str:
    meta, civitai = entry.metadata, entry.civitai
    rows = [(label, meta[key]) for key, label in TRAINING_KEYS if key in meta]
    frequency = meta.get("ss_tag_frequency")
    if isinstance(frequency, dict):
        counts: dict[str, int] = {}
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, (int, float)):
                        counts[str(tag)] = counts.get(str(tag), 0) + int(count)
        top = sorted(counts.items(), key=lambda item: -item[1])[:20]
        rows.append(("Tags", ", ".join(f"{tag} ({count})" for tag, count in top)))
    if civitai:
        rows.append(("Civitai base model", civitai.get("baseModel", "")))
        words = civitai.get("trainedWords")
        if isinstance(words, list):
            rows.append(("Civitai trained words", ", ".join(str(w) for w in words)))
    rows.append(("File", f"{entry.relative} ({entry.size:,} bytes)"))
    family = FAMILY_NAMES.get(entry.family or "", "unknown")
    rows.append(("Model family", family))
    lines = ["| | |", "|---|---|"] + [f"| {html.escape(str(k))} | {html.escape(str(v))[:2000].replace('|', '&#124;')} |"
                                     for k, v in rows]
    return "\n".join(lines)


def _full_metadata(entry: NetworkEntry) -> str:
    shown = {"training metadata (safetensors header)": entry.metadata, "civitai.info": entry.civitai}
    return json.dumps(shown, indent=2, ensure_ascii=False, default=str)[:200_000]


def panel(ctx: UIContext, tab: str, prompt: gr.Textbox, negative: gr.Textbox) -> dict:
    """The toggle button, the panel and the metadata editor; returns what the tab wires later."""
    catalogue = ctx.engine.addons.networks
    toggle = gr.Button("Extra networks", elem_id=f"{tab}_extra_networks_toggle", size="sm",
                       elem_classes=["extra-networks-toggle"])
    opened = gr.State(False)
    grids: dict[str, gr.HTML] = {}
    with gr.Column(visible=False, elem_id=f"{tab}_extra_networks", elem_classes=["extra-networks"]) as column:
        with gr.Row():
            refresh = gr.Button("Refresh", elem_id=f"{tab}_extra_networks_refresh", size="sm", scale=0)
        with gr.Tabs(elem_id=f"{tab}_extra_networks_tabs", selected=LORA):
            for kind in KINDS:
                with gr.Tab(LABELS[kind], id=kind, elem_id=f"{tab}_extra_tab_{kind}"):
                    grids[kind] = gr.HTML("", elem_id=f"{tab}_{kind}_grid", js_on_load=None)
        target = gr.Textbox(visible="hidden", elem_id=f"{tab}_en_target")
        open_editor = gr.Button(visible="hidden", elem_id=f"{tab}_en_open")
        with gr.Group(visible=False, elem_id=f"{tab}_en_editor", elem_classes=["en-editor"]) as editor:
            heading = gr.Markdown("", elem_id=f"{tab}_en_editor_title")
            fields = {
                "description": gr.Textbox(label="Description", lines=2, elem_id=f"{tab}_en_description"),
                "activation text": gr.Textbox(label="Activation text", elem_id=f"{tab}_en_activation"),
                "preferred weight": Number(label="Preferred weight (0: the default multiplier)", value=0,
                                              elem_id=f"{tab}_en_weight"),
                "negative text": gr.Textbox(label="Negative text", elem_id=f"{tab}_en_negative"),
                "sd version": gr.Dropdown(list(SD_VERSIONS), value="Unknown", label="SD version",
                                          elem_id=f"{tab}_en_sd_version"),
                "notes": gr.Textbox(label="Notes", lines=2, elem_id=f"{tab}_en_notes"),
            }
            summary = gr.Markdown("", elem_id=f"{tab}_en_training")
            with gr.Accordion("All training metadata and civitai info", open=False):
                full = gr.Code("", language="json", interactive=False, elem_id=f"{tab}_en_metadata")
            with gr.Row():
                save = gr.Button("Save", variant="primary", elem_id=f"{tab}_en_save")
                replace = gr.Button("Replace preview with the selected picture", elem_id=f"{tab}_en_replace_preview")
                close = gr.Button("Close", elem_id=f"{tab}_en_close")
            note = gr.Markdown("", elem_id=f"{tab}_en_note")

    def render_all():
        return [cards_html(ctx, tab, kind) for kind in KINDS]

    def render_kind(changed: str):
        """The grid of the kind a card was edited in again; the others as they are."""
        return [cards_html(ctx, tab, kind) if kind == changed else gr.update() for kind in KINDS]

    def toggled(is_open: bool):
        if is_open:
            return [gr.update(visible=False), *[gr.update() for _ in KINDS], False]
        return [gr.update(visible=True), *render_all(), True]

    def refreshed():
        ctx.engine.addons.loras.refresh()
        ctx.engine.addons.embeddings.refresh()
        ctx.registry.refresh()
        return render_all()

    def opened_editor(chosen: str):
        kind, _, relative = (chosen or "").partition("\n")
        try:
            if kind == CHECKPOINT:
                sync_checkpoints(ctx)
            entry = catalogue.find(kind, relative)
        except UserError as error:
            return [gr.update(visible=False), "", *[gr.update() for _ in USER_KEYS], "", "",
                    f"**{html.escape(error.message)}**"]
        user = entry.user
        values = [str(user.get("description") or ""), str(user.get("activation text") or ""),
                  preferred_weight(user) or 0, str(user.get("negative text") or ""),
                  user.get("sd version") if user.get("sd version") in SD_VERSIONS else "Unknown",
                  str(user.get("notes") or "")]
        return [gr.update(visible=True), f"### {html.escape(entry.name)}", *values, _training_summary(entry),
                _full_metadata(entry), ""]

    def saved(chosen: str, *values):
        kind, _, relative = (chosen or "").partition("\n")
        try:
            catalogue.save_user_metadata(kind, relative, dict(zip(USER_KEYS, values, strict=True)))
        except UserError as error:
            return [f"**{html.escape(error.message)}**", *[gr.update() for _ in KINDS]]
        return [f"Saved {html.escape(Path(relative).name)} metadata.", *render_kind(kind)]

    editor_outputs = [editor, heading, *fields.values(), summary, full, note]
    toggle.click(toggled, inputs=opened, outputs=[column, *grids.values(), opened], queue=False, **PRIVATE)
    refresh.click(refreshed, outputs=list(grids.values()), queue=False, **PRIVATE)
    open_editor.click(opened_editor, inputs=target, outputs=editor_outputs, queue=False, **PRIVATE)
    save.click(saved, inputs=[target, *fields.values()], outputs=[note, *grids.values()], queue=False, **PRIVATE)
    close.click(lambda: gr.update(visible=False), outputs=editor, queue=False, **PRIVATE)

    def wire_results(results: dict) -> None:
        """"Replace preview" takes the gallery's selected picture (the results exist only later)."""
        def replaced(chosen: str, pictures, index):
            kind, _, relative = (chosen or "").partition("\n")
            picture = _selected_picture(pictures, index)
            if picture is None:
                return ["**Select a picture in the gallery first.**", *[gr.update() for _ in KINDS]]
            try:
                catalogue.save_preview(kind, relative, picture)
            except UserError as error:
                return [f"**{html.escape(error.message)}**", *[gr.update() for _ in KINDS]]
            return [f"Saved the preview of {html.escape(Path(relative).name)}.", *render_kind(kind)]

        replace.click(replaced, inputs=[target, results["gallery"], results["selected"]],
                      outputs=[note, *grids.values()], queue=False, **PRIVATE)

    return {"toggle": toggle, "grids": grids, "wire_results": wire_results}


def _selected_picture(pictures, index):
    if not pictures:
        return None
    index = index if isinstance(index, int) and 0 <= index < len(pictures) else 0
    item = pictures[index]
    picture = item[0] if isinstance(item, (tuple, list)) else item
    return picture if hasattr(picture, "save") else None


def wire_checkpoint_cards(ctx: UIContext, bar: dict) -> None:
    """A checkpoint card, in any tab, switches the checkpoint as the checkpoint list does: the
    page puts the card's title in one hidden box and presses one hidden button. When the
    checkpoint changes, the page dims the cards again for the new model's family."""
    chosen = gr.Textbox(visible="hidden", elem_id="extra_networks_checkpoint")
    go = gr.Button(visible="hidden", elem_id="extra_networks_checkpoint_go")
    go.click(bar["switch"], inputs=chosen, outputs=bar["switch_outputs"], concurrency_id="generate",
             concurrency_limit=32, show_progress="hidden", **PRIVATE)
    family = gr.Textbox(visible="hidden", elem_id="extra_networks_family")

    def loaded_family() -> str:
        model = ctx.models.current
        return model.family if model is not None else ""

    # The status line says "Loading ..." while a checkpoint loads and is emptied when it is done
    # (the list itself changes when the pick is made, before the load).
    bar["status"].change(loaded_family, outputs=family, queue=False, show_progress="hidden", **PRIVATE).then(
        None, inputs=family, js="(family) => { window.sdStudioCardsFamily?.(family); return []; }",
        queue=False, show_progress="hidden", **PRIVATE)
