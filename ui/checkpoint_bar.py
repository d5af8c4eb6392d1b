"""The checkpoint picker above the tabs, and the notice shown when there is no model at all."""

from __future__ import annotations

import html

import gradio as gr

from engine.errors import UserError
from engine.models import prediction as predictions
from engine.models.text_encoders import MODULES_KEY

from .context import UIContext
from .number_inputs import Slider
from .progress_view import POLL_SECONDS, download_steps
from .widgets import REFRESH


def _current_title(ctx: UIContext) -> str | None:
    model = ctx.models.current
    if model is None and not ctx.engine.studio_generates:  # the workers load it: show the choice
        return ctx.engine.chosen_checkpoint()
    return model.info.title if model else None


def no_model_text(ctx: UIContext) -> str:
    folders = ", ".join(f"`{folder}`" for folder in ctx.registry.folders)
    return (
        "### No checkpoint yet\n"
        f"Put a checkpoint (`.safetensors` or `.gguf`: SD 1.x, SD 2.x, SDXL, FLUX.1 or SD 3.5) into {folders}, "
        f"then press {REFRESH} next to the checkpoint list. To try the UI without a download, "
        "restart with `--demo`."
    )


def build(ctx: UIContext) -> dict:
    with gr.Row(elem_id="checkpoint_bar"):
        # Custom values allowed: a name the list no longer holds (a folder model's title gains
        # its hash once loaded; another page's list may be older) reaches `switch`, which looks
        # it up and names the problem, instead of Gradio refusing the event with a bare "Error".
        dropdown = gr.Dropdown(ctx.registry.titles(), value=_current_title(ctx),
                               label="Stable Diffusion checkpoint", elem_id="sd_checkpoint",
                               scale=6, allow_custom_value=True)
        refresh = gr.Button(REFRESH, elem_id="sd_checkpoint_refresh", scale=0, min_width=40,
                            elem_classes=["tool"])
        quick = _quick_settings(ctx)
        status = gr.Markdown("", elem_id="sd_checkpoint_status")
    with gr.Group(visible=False, elem_id="no_model_notice") as notice:
        gr.Markdown(no_model_text(ctx), elem_id="no_model_text")
        download = _download_offer(ctx)

    def refreshed():
        ctx.registry.refresh()
        ctx.engine.addons.vaes.refresh()
        titles = ctx.registry.titles()
        return {dropdown: gr.update(choices=titles, value=_current_title(ctx)),
                notice: gr.update(visible=not titles and ctx.models.current is None),
                quick["sd_vae"]: gr.update(choices=ctx.engine.addons.vaes.choices(),
                                           value=ctx.settings["sd_vae"]),
                quick["CLIP_stop_at_last_layers"]: ctx.settings["CLIP_stop_at_last_layers"],
                quick["prediction"]: gr.update(**_prediction_update(ctx)),
                quick["modules"]: gr.update(**_modules_update(ctx))}

    def on_page_load():
        """Show the list at once; if a checkpoint is still loading, say so and update when done."""
        yield refreshed()
        loading = ctx.engine.pending_load()
        if loading is None:
            return
        yield {status: f"Loading {html.escape(loading.description.removeprefix('load '))}..."}
        loading.wait()
        failure = getattr(loading.error, "message", None) if loading.error else None
        yield {**refreshed(), status: f"**Could not load:** {html.escape(failure)}" if failure else ""}

    def switch(title: str | None, request: gr.Request):
        """The page sends "input" twice for one pick (on the choice, and again as the list
        closes): the repeat finds the model loaded, or loading, and changes nothing. A generator
        that ends without yielding would set every output to None (an empty checkpoint box)."""
        title = (title or "").strip()
        try:
            wanted = ctx.registry.find(title) if title else None
        except UserError as error:
            yield {status: f"**{html.escape(error.message)}**", dropdown: gr.update(value=_current_title(ctx))}
            return
        current = ctx.models.current
        if wanted is None or (current is not None and (current.info.path, current.info.kind) ==
                              (wanted.path, wanted.kind)):
            yield {status: "", dropdown: gr.update(choices=ctx.registry.titles(), value=_current_title(ctx)),
                   quick["prediction"]: gr.update(**_prediction_update(ctx))}
            return
        try:
            job = ctx.engine.load_checkpoint(title, owner=request.session_hash or "")
        except UserError as error:
            yield {status: f"**{html.escape(error.message)}**", dropdown: gr.update(value=_current_title(ctx))}
            return
        yield {status: f"Loading {html.escape(title)}..."}
        while not job.wait(POLL_SECONDS):
            pass
        if job.error is not None:
            text = getattr(job.error, "message", str(job.error))
            yield {status: f"**Could not load:** {html.escape(text)}",
                   dropdown: gr.update(value=_current_title(ctx))}
        else:
            yield {status: "", dropdown: gr.update(choices=ctx.registry.titles(),
                                                   value=_current_title(ctx)),
                   quick["prediction"]: gr.update(**_prediction_update(ctx)),
                   quick["modules"]: gr.update(**_modules_update(ctx))}

    def pick_modules(chosen: list[str] | None, request: gr.Request):
        """Forge's VAE / Text Encoder picker: the loaded FLUX.1 / SD 3 checkpoint loads again with
        these files (and keeps them for the next time it is loaded); with an SD-family checkpoint
        or none loaded, the choice waits for the next FLUX.1 / SD 3 load."""
        chosen = list(chosen or [])
        model = ctx.models.current
        if model is None or not model.is_flow:
            try:
                ctx.settings.update({MODULES_KEY: chosen})
            except UserError as error:
                gr.Warning(error.message)
            yield {status: "", quick["modules"]: gr.update(**_modules_update(ctx))}
            return
        try:
            job = ctx.engine.load_checkpoint(model.info.title, owner=request.session_hash or "", modules=chosen)
        except UserError as error:
            yield {status: f"**{html.escape(error.message)}**", quick["modules"]: gr.update(**_modules_update(ctx))}
            return
        yield {status: f"Loading {html.escape(model.info.title)} with {html.escape(', '.join(chosen) or 'its own parts')}..."}
        while not job.wait(POLL_SECONDS):
            pass
        failure = getattr(job.error, "message", str(job.error)) if job.error is not None else None
        yield {status: f"**Could not load:** {html.escape(failure)}" if failure else "",
               quick["modules"]: gr.update(**_modules_update(ctx))}

    private = {"api_visibility": "private"}
    quick["modules"].input(pick_modules, inputs=quick["modules"], outputs=[status, quick["modules"]],
                           concurrency_id="generate", concurrency_limit=32, show_progress="hidden", **private)
    refresh.click(refreshed, outputs=[dropdown, notice, *quick.values()], queue=False, **private)
    dropdown.input(switch, inputs=dropdown, outputs=[status, dropdown, quick["prediction"], quick["modules"]],
                   concurrency_id="generate",
                   concurrency_limit=32, show_progress="hidden", **private)
    # The extra network cards' checkpoint cards switch through `switch` too (ui/network_cards.py).
    return {"dropdown": dropdown, "notice": notice, "status": status, "on_load": on_page_load,
            "download": download, "quick": quick, "switch": switch,
            "switch_outputs": [status, dropdown, quick["prediction"], quick["modules"]]}


def _quick_settings(ctx: UIContext) -> dict:
    """The settings people change all the time, beside the checkpoint: VAE and clip skip."""
    settings = ctx.settings
    vae = gr.Dropdown(ctx.engine.addons.vaes.choices(), value=settings["sd_vae"], label="SD VAE",
                      elem_id="sd_vae", scale=3)
    clip_skip = Slider(1, 12, step=1, value=settings["CLIP_stop_at_last_layers"], label="Clip skip",
                          elem_id="clip_skip", scale=2)

    def store(key: str):
        def handler(value):
            try:
                settings.check_editable([key])
                settings.update({key: value})
            except UserError as error:
                gr.Warning(error.message)
        return handler

    prediction = gr.Dropdown(list(predictions.OVERRIDE_CHOICES), label="Prediction", elem_id="sd_prediction",
                             scale=2, **_prediction_update(ctx))

    def store_prediction(choice: str):
        """This checkpoint's prediction type (for files that do not say): its next job uses it."""
        model = ctx.models.current
        if model is None:
            gr.Warning("Load a checkpoint first: the prediction type is kept per checkpoint.")
            return gr.update(**_prediction_update(ctx))
        key = predictions.OVERRIDES_KEY
        try:
            settings.check_editable([key])
            settings.update({key: predictions.with_override(settings[key], model.info.name, choice)})
        except (UserError, ValueError) as error:
            gr.Warning(getattr(error, "message", str(error)))
        return gr.update(**_prediction_update(ctx))

    vae.input(store("sd_vae"), inputs=vae, queue=False, api_visibility="private")
    clip_skip.release(store("CLIP_stop_at_last_layers"), inputs=clip_skip, queue=False,
                      api_visibility="private")
    prediction.input(store_prediction, inputs=prediction, outputs=prediction, queue=False,
                     api_visibility="private")
    # Forge's "VAE / Text Encoder": the files a FLUX.1 / SD 3 checkpoint loads with.
    modules = gr.Dropdown(label="VAE / Text Encoder", elem_id="sd_modules", multiselect=True, scale=4,
                          allow_custom_value=True,
                          **_modules_update(ctx))
    return {"sd_vae": vae, "CLIP_stop_at_last_layers": clip_skip, "prediction": prediction, "modules": modules}


def _modules_update(ctx: UIContext) -> dict:
    """The files the picker offers, and the loaded checkpoint's choice (the setting's otherwise)."""
    library = ctx.engine.models.text_encoders
    library.refresh()
    model = ctx.models.current
    chosen = list(model.modules_choice) if model is not None and model.is_flow else list(ctx.settings[MODULES_KEY])
    hint = ("The files this FLUX.1 / SD 3 checkpoint loads with" if model is not None and model.is_flow
            else "For FLUX.1 / SD 3 checkpoints: their VAE and text encoders")
    return {"choices": library.choices(), "value": [name for name in chosen], "info": hint}


def _prediction_update(ctx: UIContext) -> dict:
    """The prediction choice stored for the loaded checkpoint, and what its file says."""
    model = ctx.models.current
    if model is None:
        return {"value": predictions.AUTOMATIC, "info": "For the loaded checkpoint"}
    info = model.info
    choice = predictions.override_for(ctx.settings[predictions.OVERRIDES_KEY],
                                      (info.title, info.name, info.model_name, info.short_hash))
    return {"value": choice, "info": f"Automatic: {model.detected.describe()}"}


def _download_offer(ctx: UIContext) -> dict:
    """A button to fetch SD 1.5, shown only when its host can be reached."""
    downloader = ctx.download
    button = gr.Button("Download", visible=False, elem_id="download_model")
    bar = gr.HTML("", elem_id="download_progress")
    if downloader is None:
        return {"button": button, "bar": bar, "check": None}
    offer = downloader.offer

    def check():
        visible = downloader.reachable()
        label = f"Download {offer.label} ({offer.size_label}) into {downloader.dest_dir}"
        return gr.update(visible=visible, value=label)

    def run():
        error = yield from download_steps(downloader.download)
        if error:
            yield f"<b>Download failed:</b> {html.escape(error)}"
        else:
            yield f"Downloaded {html.escape(offer.filename)}. Press {REFRESH} to list it."

    button.click(run, outputs=bar, concurrency_id="download", concurrency_limit=1,
                 api_visibility="private", show_progress="hidden")
    return {"button": button, "bar": bar, "check": check}
