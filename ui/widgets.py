"""Widgets every generation tab shares, built once: prompts, sampler, size, batch, seeds, results.

Each builder returns a dict of named components; a tab merges them into one `controls` dict and
`ui.request_builder` turns their values into a GenerationRequest.
"""

from __future__ import annotations

import gradio as gr

from engine import request as limits
from engine.families.flux import DEFAULT_DISTILLED_CFG
from engine.sampling import samplers

from . import model_offer
from .number_inputs import Number, Slider

DICE = "\U0001F3B2"     # random seed
RECYCLE = "\u267B\ufe0f"  # reuse last seed
SWAP = "\u21C5"          # swap width and height
REFRESH = "\U0001F504"
PASTE = "\u2199\ufe0f"     # read generation parameters into the controls
SEND_TARGETS = {"img2img": "Send to img2img", "inpaint": "Send to inpaint", "extras": "Send to extras"}


def prompt_boxes(tab: str) -> tuple[dict[str, gr.components.Component], dict[str, gr.HTML]]:
    """The prompt and negative prompt boxes, each with a token counter (wired by the tab)."""
    boxes, counters = {}, {}
    for name, label, lines in (("prompt", "Prompt", 3), ("negative_prompt", "Negative prompt", 2)):
        placeholder = f"{label} (Ctrl+Enter to generate)" if name == "prompt" else label
        elem = f"{tab}_prompt" if name == "prompt" else f"{tab}_neg_prompt"
        counters[name] = gr.HTML("", elem_id=f"{elem}_token_counter", elem_classes=["token-counter-box"])
        boxes[name] = gr.Textbox(label=label, lines=lines, max_lines=20, elem_id=elem,
                                 placeholder=placeholder, elem_classes=["prompt"])
    return boxes, counters


def initial(start: dict | None, name: str, **builtin) -> dict:
    """A control's value and range: the builder's own, unless the user's UI defaults
    (ui.ui_defaults.start_values) say otherwise."""
    return {**builtin, **(start or {}).get(name, {})}


def sampler_row(tab: str, start: dict | None = None) -> dict[str, gr.components.Component]:
    with gr.Row():
        sampler = gr.Dropdown(samplers.sampler_names(), label="Sampling method", elem_id=f"{tab}_sampling",
                              **initial(start, "sampler_name", value=samplers.DEFAULT_SAMPLER))
        schedule = gr.Dropdown(list(samplers.SCHEDULE_TYPES), label="Schedule type",
                               elem_id=f"{tab}_scheduler", **initial(start, "scheduler", value="Automatic"))
        steps = Slider(step=1, label="Sampling steps", elem_id=f"{tab}_steps",
                          **initial(start, "steps", minimum=1, maximum=limits.MAX_STEPS, value=20))

    return {"sampler_name": sampler, "scheduler": schedule, "steps": steps}


def size_sliders(tab: str, start: dict | None = None) -> dict[str, gr.components.Component]:
    size = {"minimum": limits.MIN_SIZE, "maximum": limits.MAX_SIZE, "value": 512}
    with gr.Row():
        with gr.Column(scale=4):
            width = Slider(step=limits.SIZE_STEP, label="Width", elem_id=f"{tab}_width",
                              **initial(start, "width", **size))
            height = Slider(step=limits.SIZE_STEP, label="Height", elem_id=f"{tab}_height",
                               **initial(start, "height", **size))
        swap = gr.Button(SWAP, elem_id=f"{tab}_swap_size", scale=0, min_width=40,
                         elem_classes=["tool"])
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False,
               api_visibility="private")
    return {"width": width, "height": height}


def batch_sliders(tab: str, start: dict | None = None) -> dict[str, gr.components.Component]:
    with gr.Row():
        n_iter = Slider(1, limits.MAX_BATCH_COUNT, step=1, label="Batch count",
                           elem_id=f"{tab}_batch_count", **initial(start, "n_iter", value=1))
        batch_size = Slider(1, limits.MAX_BATCH_SIZE, step=1, label="Batch size",
                               elem_id=f"{tab}_batch_size", **initial(start, "batch_size", value=1))
    return {"n_iter": n_iter, "batch_size": batch_size}


def cfg_slider(tab: str, start: dict | None = None) -> dict[str, gr.components.Component]:
    with gr.Row():
        scale = Slider(step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale", scale=4,
                       **initial(start, "cfg_scale", minimum=limits.MIN_CFG, maximum=limits.MAX_CFG, value=7.0))
        # Lin et al.'s rescaled guidance, for v-prediction / zero-terminal-SNR models (0: off).
        rescale = Slider(0.0, 1.0, step=0.05, value=0.0, label="CFG Rescale", elem_id=f"{tab}_cfg_rescale",
                         scale=1)
    with gr.Row():
        # FLUX.1-dev's guidance input (Forge's slider) and the flow shift of FLUX.1 / SD 3.x; both do
        # nothing to SD-family checkpoints.
        distilled = Slider(0.0, limits.MAX_CFG, step=0.1, value=DEFAULT_DISTILLED_CFG,
                           label="Distilled CFG Scale (FLUX.1-dev)", elem_id=f"{tab}_distilled_cfg_scale", scale=4)
        shift = Slider(0.0, 10.0, step=0.05, value=0.0, label="Shift (flow models; 0: the model's own)",
                       elem_id=f"{tab}_shift", scale=2)
    return {"cfg_scale": scale, "cfg_rescale": rescale, "distilled_cfg_scale": distilled, "shift": shift}


def size_and_batch(tab: str, start: dict | None = None) -> dict[str, gr.components.Component]:
    with gr.Row():
        with gr.Column(scale=4):
            controls = size_sliders(tab, start)
        with gr.Column(scale=2):
            controls.update(batch_sliders(tab, start))
    controls.update(cfg_slider(tab, start))
    return controls


def seed_row(tab: str, last_seeds: gr.State) -> dict[str, gr.components.Component]:
    """Seed with dice and reuse buttons, plus variation seed options behind 'Extra'."""
    with gr.Row():
        seed = Number(label="Seed", value=-1, precision=0, elem_id=f"{tab}_seed", scale=4)
        random_seed = gr.Button(DICE, elem_id=f"{tab}_random_seed", scale=0, min_width=40,
                                elem_classes=["tool"])
        reuse_seed = gr.Button(RECYCLE, elem_id=f"{tab}_reuse_seed", scale=0, min_width=40,
                               elem_classes=["tool"])
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=1)
    with gr.Group(visible=False) as extra_group:
        with gr.Row():
            subseed = Number(label="Variation seed", value=-1, precision=0,
                                elem_id=f"{tab}_subseed", scale=4)
            random_subseed = gr.Button(DICE, elem_id=f"{tab}_random_subseed", scale=0, min_width=40,
                                       elem_classes=["tool"])
            reuse_subseed = gr.Button(RECYCLE, elem_id=f"{tab}_reuse_subseed", scale=0,
                                      min_width=40, elem_classes=["tool"])
            strength = Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                 elem_id=f"{tab}_subseed_strength", scale=4)
        with gr.Row():
            resize_w = Slider(0, limits.MAX_SIZE, value=0, step=limits.SIZE_STEP,
                                 label="Resize seed from width", elem_id=f"{tab}_seed_resize_from_w")
            resize_h = Slider(0, limits.MAX_SIZE, value=0, step=limits.SIZE_STEP,
                                 label="Resize seed from height", elem_id=f"{tab}_seed_resize_from_h")

    private = {"queue": False, "api_visibility": "private"}
    extra.change(lambda shown: gr.update(visible=shown), inputs=extra, outputs=extra_group, **private)
    random_seed.click(lambda: -1, outputs=seed, **private)
    random_subseed.click(lambda: -1, outputs=subseed, **private)
    reuse_seed.click(lambda last: last.get("seed", -1) if last else -1, inputs=last_seeds,
                     outputs=seed, **private)
    reuse_subseed.click(lambda last: last.get("subseed", -1) if last else -1, inputs=last_seeds,
                        outputs=subseed, **private)
    return {"seed": seed, "subseed_show": extra, "subseed": subseed, "subseed_strength": strength,
            "seed_resize_from_w": resize_w, "seed_resize_from_h": resize_h}


def override_settings(tab: str) -> dict[str, gr.components.Component]:
    """Settings a pasted infotext asks for that differ from the current ones ("RNG: NV",
    "Clip skip: 2"): they apply to this tab's jobs until removed or replaced by another paste."""
    box = gr.Dropdown([], value=[], multiselect=True, label="Override settings", visible=False,
                      elem_id=f"{tab}_override_settings")
    return {"override_settings": box}


def action_buttons(tab: str) -> dict[str, gr.Button]:
    generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate",
                         elem_classes=["generate-button"])
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
        skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
        # Reads an infotext pasted (or a PNG dropped) into the prompt box into the controls.
        paste = gr.Button(f"{PASTE} Read parameters", elem_id=f"{tab}_paste", size="sm")
    return {"generate": generate, "interrupt": interrupt, "skip": skip, "paste": paste}


def results_panel(tab: str) -> dict[str, gr.components.Component]:
    """Progress, messages (why nothing was made, notes), the gallery (PNG, so downloads keep
    their metadata) and the selected image's infotext; built under the Generate button."""
    progress = gr.HTML("", elem_id=f"{tab}_progress", elem_classes=["progress-view"])
    message = gr.Markdown("", elem_id=f"{tab}_message", elem_classes=["message"])
    offer = model_offer.offer_area(tab)  # a missing standard model's download, right by the message
    gallery = gr.Gallery(label="Output", format="png", type="pil", columns=4, height="auto",
                         object_fit="contain", elem_id=f"{tab}_gallery", interactive=False,
                         preview=True)
    with gr.Row(elem_id=f"{tab}_send_buttons"):
        send = {target: gr.Button(label, elem_id=f"{tab}_send_to_{target}", size="sm")
                for target, label in SEND_TARGETS.items()}
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                      elem_id=f"{tab}_infotext", buttons=["copy"])
    infotexts = gr.State([])
    selected = gr.State(0)

    def show_selected(texts: list[str], event: gr.SelectData):
        index = event.index if isinstance(event.index, int) else 0
        return (texts[index] if 0 <= index < len(texts) else ""), index

    gallery.select(show_selected, inputs=infotexts, outputs=[info, selected], queue=False,
                   api_visibility="private")
    # New results: the first one is selected until the user picks another.
    gallery.change(lambda: 0, outputs=selected, queue=False, api_visibility="private")
    return {"progress": progress, "gallery": gallery, "infotext": info, "message": message,
            "infotexts": infotexts, "selected": selected, "send": send, "offer": offer}
