"""The engine's front door: what the UI and the API call.

It validates requests, puts work on the one GPU lane and hands back jobs; the caller waits on a
job or polls its progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator

from engine.sampling import samplers

from engine.memory import memory_guard
from engine.addons import AddOns
from engine.families import family_of
from engine.models.text_encoders import MODULES_KEY
from engine.settings.checkpoint_modules import remembered_modules, settings_after_load
from engine.prompts.conditioning import CHUNK_TOKENS
from engine.prompts.encoders import prompt_encoder
from engine.controlnet.checks import check_units
from engine.errors import RequestError, UserError
from engine.postprocess.extras import UPSCALERS, ExtrasRequest, ExtrasResult, upscale
from engine.postprocess.faces import RESTORERS, check_restorer, detail_faces, restore_with_model
from engine.runs.fast_path import FastPath, JobTraits
from engine.runs.generation import GenerationRun
from engine.runs.image_context import ImageContext
from engine.runs.refiner import complete_refiner
from engine.job_results import GenerationResult, OutputPolicy, policy_from_settings
from engine.jobs import Job, JobQueue
from engine.job_controls import JobControls
from engine.memory.memory_modes import NONE
from engine.output.writer import OutputWriter
from engine.models.pipelines import LoadedModel, ModelManager
from engine.prompts.prompt_parser import extract_extra_networks, prompt_schedule
from engine.request import GenerationRequest, ScriptChoice, checked_mask
from engine.settings.store import Settings
from engine.runs.uploads import check_pixel_limit
from engine.runs.script_host import InstalledNames, JobScriptHost, checkpoint_kept
from engine.extensions.registry import NOT_EXTENSION_FAULTS
from engine.extensions.script import checked_options
from engine.postprocess.interrogate import Captioner
from engine.merge.checkpoint_merger import CheckpointMerger
from engine.merge.merge_request import MergeRequest, MergeResult
from engine.errors import ScriptError
from PIL import Image

log = logging.getLogger(__name__)

# Settings that change the app for everyone at once, never for one request.
SHARED_SETTINGS = frozenset({"disabled_extensions", "hidden_tabs", "sd_checkpoint_cache"})
FACE_PROMPT = "a detailed face, sharp focus"  # what the face detailer asks for outside a job


class Engine(JobControls):
    def __init__(self, models: ModelManager, writer: OutputWriter, settings: Settings,
                 addons: AddOns, queue: JobQueue | None = None):
        self.models = models
        self.writer = writer
        self.settings = settings
        self.addons = addons
        self.queue = queue or JobQueue()
        # Set by app.py when other lanes (GPUs, cluster workers) share the queue: generations
        # then also carry what a worker needs (engine/cluster); `studio_generates` False: the
        # studio's own process makes no pictures (a head without a GPU), it only loads for them.
        self.has_workers = False
        self.studio_generates = True
        self._chosen: str | None = None  # the checkpoint the latest switch asked for
        self.cluster = None  # with --cluster: the Ray side (engine/cluster/ray_cluster.py)
        self.fast_path = FastPath(models.device.device, settings.data_dir / "cache" / "torch-compile")
        # LDSR reads its settings (ldsr_steps, ldsr_cached) when it runs, and stops when its job is
        # interrupted.
        upscalers = addons.upscalers
        upscalers.options = lambda: {key: settings[key] for key in ("ldsr_steps", "ldsr_cached")}
        upscalers.should_stop = lambda: any(job.interrupted for job in self.queue.running() if job.lane_name == "studio")
        # ControlNet preprocessors fetch their annotator weights on first use when it allows.
        addons.controlnets.annotators.may_download = lambda: settings["auto_download_models"]
        self.captioner = Captioner(addons.faces.models_dir, models.device)
        self.merger = CheckpointMerger(models.registry, addons.vaes, models.allow_unsafe)
        self.catalog = InstalledNames(addons, models.registry, self.upscaler_names, RESTORERS,
                                      self._upscaler_in_use, lambda name: check_restorer(name, addons.faces))
        # A FLUX.1 / SD 3 checkpoint loads with its remembered VAE / text encoder files.
        models.modules_for = lambda info: remembered_modules(settings, info)
        self.sync_extensions()
        for entry in addons.extensions.loaded():
            # Extensions and scripts get the names of what is installed, never the libraries.
            entry.extension.attach(self.catalog)

    def sync_extensions(self) -> None:
        """Enable the extensions the `disabled_extensions` setting does not name (it may have
        been changed from the Extensions tab, the Settings tab or the options API)."""
        registry = self.addons.extensions
        registry.set_enabled({e.name for e in registry.entries} - set(self.settings["disabled_extensions"]))

    # Generation.
    def submit(self, request: GenerationRequest, owner: str = "", job_id: str | None = None,
               make_grid: bool = True, overrides: dict | None = None, restore_overrides: bool = True) -> Job:
        """Validate now (so a bad request fails at once), run later on the GPU lane.

        `overrides` are settings for this job only (the API's override_settings); a checkpoint
        among them is loaded for the job and, with `restore_overrides`, the previous one after it."""
        overrides, ignored = self._split_overrides(overrides or {})
        checkpoint = overrides.pop("sd_model_checkpoint", None)
        if checkpoint is not None:
            if not isinstance(checkpoint, str):
                raise RequestError("override_settings: sd_model_checkpoint must be text", "override_settings")
            checkpoint = self.models.registry.find(checkpoint).title if checkpoint else None
        modules = overrides.pop(MODULES_KEY, None)
        if modules is not None:
            modules = tuple(self.settings.options[MODULES_KEY].accept(modules, self.settings.data_dir))
        with self.settings.overridden(overrides):
            request = self.complete(request.validate()).validate()
            policy = self._policy(request, make_grid)

        def work(job: Job) -> GenerationResult:
            with self.settings.overridden(overrides), self._checkpoint_for(checkpoint, restore_overrides, modules):
                if request.script is not None:
                    result = self._run_script(job, request, policy)
                else:
                    result = self._run(job, request, policy)
            return finish(result)

        def finish(result: GenerationResult) -> GenerationResult:
            if not restore_overrides:
                self._keep_overrides(overrides, result)
            if ignored:
                result.ignored_settings = ignored
                result.warnings.append("Settings not used here (left as they are): " + ", ".join(ignored))
            return result

        remote = None
        if self.has_workers:
            from engine.cluster.remote_jobs import remote_work

            remote = remote_work(self, request, owner, checkpoint, overrides, modules, make_grid, finish)
        job = Job(work, owner=owner, job_id=job_id, description=f"{request.mode}: {request.prompt[:60]}",
                  if_stopped_early=lambda: self._nothing_made(request), remote=remote)
        return self.queue.submit(job)

    def _split_overrides(self, overrides: dict) -> tuple[dict, list[str]]:
        """The overrides this job applies, and the names of those it leaves alone: settings of other
        web UIs (client programs send many), features not in this version, and settings that
        change the app for everyone (set those with POST /sdapi/v1/options)."""
        known, ignored = self.settings.known(dict(overrides))
        for key in sorted(set(known) & SHARED_SETTINGS):
            ignored.append(key)
            del known[key]
        return known, ignored

    def _keep_overrides(self, overrides: dict, result: GenerationResult) -> None:
        """override_settings_restore_afterwards=false: the settings stay as the job had them
        (those a start flag freezes excepted)."""
        kept = {key: value for key, value in overrides.items() if not self.settings.locked_reason(key)}
        frozen = sorted(set(overrides) - set(kept))
        if kept:
            self.settings.update(kept)
        if frozen:
            result.warnings.append("Settings frozen by a start flag, used for this job only: " + ", ".join(frozen))

    def _nothing_made(self, request: GenerationRequest) -> GenerationResult:
        """What a generation interrupted while it waited returns: an interrupted result with no
        images, which the UI and the API already know how to show."""
        current, chosen = self.models.current, self.chosen_checkpoint()
        if current is not None or not chosen:
            info = self.models.require().info
        else:  # a studio that leaves the pictures to its workers loads nothing
            info = self.models.registry.find(chosen)
        return GenerationResult(request, info, [], [], [], [], interrupted=True,
                                prompt=request.prompt, negative_prompt=request.negative_prompt)

    @contextlib.contextmanager
    def _checkpoint_for(self, wanted: str | None, restore: bool, modules: tuple | None = None) -> Iterator[None]:
        """Run with checkpoint `wanted` loaded (None: whatever is loaded), with the VAE / text
        encoder files `modules` (None: its remembered ones)."""
        current = self.models.current
        previous = current.info.title if current else None
        previous_modules = current.modules_choice if current else None
        if modules is not None and wanted is None:
            wanted = previous or self.initial_checkpoint(None)
        if wanted is None or (wanted == previous and (modules is None or modules == previous_modules)):
            yield
            return
        self.addons.controlnets.clear()
        model = self.models.load(wanted, modules=modules)
        try:
            yield
            if not restore:
                self._remember(model, modules)
        finally:
            if restore and previous is not None:
                self.addons.controlnets.clear()
                try:
                    self.models.load(previous, modules=previous_modules)
                except Exception:  # the job's images are made and saved: do not lose them for this
                    log.exception("could not load %s back after a request's override", previous)

    def _remember(self, model: LoadedModel, modules: tuple | None) -> None:
        self.settings.update(settings_after_load(self.settings, model, modules))

    def generate(self, request: GenerationRequest, owner: str = "", **kwargs) -> GenerationResult:
        return self.submit(request, owner, **kwargs).outcome()

    def complete(self, request: GenerationRequest) -> GenerationRequest:
        """Fill what the request leaves to the settings, and check names against what exists,
        so a queued job is fixed and a bad name fails before it waits in the queue."""
        settings = self.settings
        self.sync_extensions()
        request = request.replace(
            **samplers.parameters_from_settings(request, settings),
            clip_skip=request.clip_skip or settings["CLIP_stop_at_last_layers"],
            emphasis=request.emphasis or settings["emphasis"],
            randn_source=request.randn_source or settings["randn_source"],
            noise_schedule=request.noise_schedule or settings["sd_noise_schedule"],
            vae=self.addons.vaes.check_choice(request.vae or settings["sd_vae"]),
            extensions=self.addons.extensions.check(request.mode, self._with_settings(request.extensions)),
        )
        request = self._complete_script(request)
        if request.mode == "img2img":
            request = request.with_img2img(exact_steps=request.img2img.exact_steps or settings["img2img_fix_steps"])
            chosen = self.addons.upscalers.canonical(settings["upscaler_for_img2img"])
            if chosen is not None and chosen not in UPSCALERS:  # a standard model not downloaded: say so now
                self.addons.upscalers.require(chosen, "upscaler_for_img2img")
            self._check_upload_sizes(request)
            request = checked_mask(request, settings["img2img_empty_mask_as_img2img"])
        request = complete_refiner(request, self.models.registry, self.models.current, self.models.allow_unsafe)
        hires_checkpoint = request.extensions.get("hires_fix", {}).get("checkpoint")
        if hires_checkpoint and hires_checkpoint != "Use same checkpoint":
            self.models.registry.find(hires_checkpoint)  # an unknown name fails now, not mid-job
        if len(request.active_controlnet_units) > settings["control_net_unit_count"]:
            raise RequestError(f"At most {settings['control_net_unit_count']} ControlNet units can be used at once "
                               f"(setting control_net_unit_count), got {len(request.active_controlnet_units)}",
                               "controlnet_units")
        if request.active_controlnet_units:
            current = self.models.current
            request = request.replace(controlnet_units=check_units(
                request.controlnet_units, self.addons.controlnets, current.family if current else None))
        return request

    def _complete_script(self, request: GenerationRequest) -> GenerationRequest:
        """The request's script found, its options checked and completed with defaults."""
        if request.script is None or not request.script.name:
            return request.replace(script=None)
        entry = self.addons.extensions.find_script(request.script.name, request.mode)
        script = entry.extension
        options = checked_options(script, request.mode, request.script.options)
        script.check(request, options)
        return request.replace(script=ScriptChoice(entry.name, options))

    def _run_script(self, job: Job, request: GenerationRequest, policy: OutputPolicy) -> GenerationResult:
        """The job as its script runs it: the script gets a host whose `process` runs ordinary
        jobs on this lane, each completed from the settings (with the script's per-job ones)."""
        entry = self.addons.extensions.find_script(request.script.name, request.mode)
        base = request.replace(script=None)

        def run_job(one: GenerationRequest, settings: dict, save: bool) -> GenerationResult:
            settings, _ = self._split_overrides(settings)
            with self.settings.overridden(settings):
                one = self.complete(one.replace(script=None).validate()).validate()
                one_policy = self._policy(one, make_grid=False)
                if not save:
                    one_policy = dataclasses.replace(one_policy, save_images=False, save_grid=False)
                return self._run(job, one, one_policy)

        def load(name: str) -> None:
            job.textinfo = f"Loading {name}"
            self.addons.controlnets.clear()
            self.models.load(self.models.registry.find(name).title)

        def current() -> str | None:
            model = self.models.current
            return model.info.title if model is not None else None

        def caption(image) -> str:
            return self.captioner.caption_here(image)

        with checkpoint_kept(current, load) as use_checkpoint:
            host = JobScriptHost(job, request.mode, self.catalog, self.writer, run_job, use_checkpoint,
                                 lambda name: self.settings[name], self._upscale_for_script, caption,
                                 self._device, lambda: self.models.require().info)
            try:
                result = entry.extension.run(base, request.script.options, host)
            except NOT_EXTENSION_FAULTS:
                raise
            except Exception as error:  # a fault in the script's code: say so, keep serving
                log.exception("script %s failed", entry.name)
                raise ScriptError(f"The script '{entry.extension.title}' failed: {type(error).__name__}: "
                                  f"{error}") from error
        if policy.save_grid and result.grid is not None and result.grid_path is None:
            result.grid_path = host.save_grid(result.grid, request, result.grid_text)
        return result

    def _upscale_for_script(self, image, upscaler: str, width: int, height: int):
        name = self._upscaler_in_use(upscaler, "script_args")
        if name in UPSCALERS:
            return image.resize((width, height), UPSCALERS[name] or Image.Resampling.LANCZOS)
        return self.addons.upscalers.upscale(image, name, width, height, self._device(), faults=self.addons.faults)

    def _with_settings(self, requested) -> dict:
        """Extension options the settings provide when a request leaves them out."""
        options = {name: dict(values) for name, values in (requested or {}).items()}
        if "restore_faces" in options:
            options["restore_faces"].setdefault("restorer", self.settings["face_restoration_model"])
            options["restore_faces"].setdefault("strength", self.settings["face_restoration_strength"])
            options["restore_faces"].setdefault("codeformer_weight", self.settings["code_former_weight"])
        hires = options.get("hires_fix")
        if hires and isinstance(hires.get("upscaler"), str):  # a standard model's file name selects it too
            self.addons.upscalers.refuse_unsupported(hires["upscaler"], "hr_upscaler")
            hires["upscaler"] = self.addons.upscalers.canonical(hires["upscaler"]) or hires["upscaler"]
        return options

    def _upscaler_in_use(self, name: str, field: str, unknown: str = "Upscaler not found") -> str:
        """The listed name of an upscaler a job uses (a standard model's file name selects it
        too). RequestError if there is none; ModelNotDownloaded if it is a standard model whose
        file is not downloaded yet (the UI offers it, the API may fetch it)."""
        if name in UPSCALERS:
            return name
        self.addons.upscalers.refuse_unsupported(name, field)
        canonical = self.addons.upscalers.canonical(name)
        if canonical is None:
            raise RequestError(f"{unknown}: '{name}'. Available: {', '.join(self.upscaler_names())}", field)
        self.addons.upscalers.require(canonical, field)
        return canonical

    def _check_upload_sizes(self, request: GenerationRequest) -> None:
        limit = self.settings["upload_max_megapixels"]
        part = request.img2img
        named = [(f"init_images[{i}]", image) for i, image in enumerate(part.init_images)]
        named += [("mask", part.mask)] if part.mask is not None else []
        for name, image in named:
            check_pixel_limit(image, limit, name)

    def _policy(self, request: GenerationRequest, make_grid: bool) -> OutputPolicy:
        return policy_from_settings(self.settings, request, make_grid)

    def _run(self, job: Job, request: GenerationRequest, policy: OutputPolicy) -> GenerationResult:
        model = self._model_for_job(job)
        traits = JobTraits.of(request, self.addons, policy.memory)
        # The memory mode first, with the fast path's module changes off while weights move: the
        # offload hooks must wrap the plain modules (the fast path stays off in offload modes).
        mode = policy.memory.memory_mode
        if mode is not None and model.placement.effective(model.mode_for(mode)) != NONE:
            self.fast_path.undo(model)
        with memory_guard.stage("model_placement", faults=self.addons.faults):  # as generation.py: OOM gets its message
            model.use_memory_mode(mode)
        with self.fast_path.job(model, job, self.settings, traits):
            runner = GenerationRun(job, request, model, policy, self.addons)
            runner.borrow_model = self.models.borrowed
            return runner.run(self.writer)

    # Post-processing.
    def extras(self, request: ExtrasRequest, owner: str = "", save: bool = True) -> Job:
        """Upscale a finished picture on the lane (model upscalers will need the GPU)."""
        request = self._checked_extras(request)
        check_pixel_limit(request.image, self.settings["upload_max_megapixels"], "image")
        restoring = {"GFPGAN": request.gfpgan_visibility, "CodeFormer": request.codeformer_visibility}
        for name, visibility in restoring.items():
            if visibility > 0:
                check_restorer(name, self.addons.faces)

        def work(job: Job) -> ExtrasResult:
            result = upscale(request, self.addons.upscalers, self._device(), faults=self.addons.faults)
            for name, visibility in restoring.items():
                if visibility > 0:
                    result.image = restore_with_model(result.image, self.addons.faces, name, self._device(),
                                                      request.codeformer_weight, visibility, faults=self.addons.faults)
            if request.face_detailer_visibility > 0:
                result.image = self._restore_faces(job, result.image, request.face_detailer_visibility)
            if save and self.settings["samples_save"]:
                result.path = self.writer.save_extras(result.image, result.infotext, result.extras)
            return result

        return self.queue.submit(Job(work, owner=owner, kind="extras", description="extras"))

    def _checked_extras(self, request: ExtrasRequest) -> ExtrasRequest:
        """The request with its upscalers' listed names (a standard model's file name selects it
        too), validated; ModelNotDownloaded if a standard model it uses is not downloaded yet."""
        library = self.addons.upscalers
        library.refuse_unsupported(request.upscaler, "upscaler")
        library.refuse_unsupported(request.upscaler_2, "upscaler_2")
        request = dataclasses.replace(request, upscaler=library.canonical(request.upscaler) or request.upscaler,
                                      upscaler_2=library.canonical(request.upscaler_2) or request.upscaler_2)
        request.validate(self.upscaler_names())
        used = [("upscaler", request.upscaler)]
        if request.second_upscaler_used:
            used.append(("upscaler_2", request.upscaler_2))
        for field, name in used:
            if name not in UPSCALERS:
                library.require(name, field)
        return request

    def upscaler_names(self) -> tuple[str, ...]:
        """Every upscaler: the resampling ones, then the model files on disk."""
        return tuple(UPSCALERS) + tuple(self.addons.upscalers.names())

    def _device(self):
        model = self.models.current
        return model.device if model is not None else self.models.device.device

    def _restore_faces(self, job: Job, image, visibility: float):
        """Extras' face restoration: the face detailer with a neutral prompt, blended in."""
        base = GenerationRequest(prompt=FACE_PROMPT, negative_prompt="blurry, deformed", steps=20,
                                 seed=0, width=512, height=512, save_images=False, save_grid=False)
        run = GenerationRun(job, base, self._model_for_job(job), OutputPolicy(save_images=False), self.addons)
        detailed = detail_faces(image, base, 0.4, ImageContext(run, 0, 0).second_pass, faults=self.addons.faults,
                                detector=self.addons.faces.detector)
        return Image.blend(image.convert("RGB"), detailed, visibility)

    # Checkpoints.
    def _model_for_job(self, job: Job) -> LoadedModel:
        """The loaded model, on the GPU lane. With none (after "Unload checkpoint", or a start with
        --skip-load-model-at-start) the chosen checkpoint loads first, as in the mature UI."""
        if self.models.current is None:
            wanted = self.initial_checkpoint(None)
            if wanted:
                job.textinfo = f"Loading {wanted}"
                model = self.models.load(wanted)
                self._remember(model, None)
        return self.models.require()

    def load_checkpoint(self, wanted: str, owner: str = "", modules=None, remember: bool = True) -> Job:
        """Switch checkpoints on the GPU lane, after any job already waiting. `modules`: the files
        picked beside a FLUX.1 / SD 3.x checkpoint (None: the choice given last). `remember`
        False: the settings keep the previous choice (a worker's switch for one job, whose
        settings are the studio's)."""
        self._chosen = self.models.registry.find(wanted).title  # an unknown name fails now, not in the queue

        def work(job: Job) -> LoadedModel | None:
            if not self.studio_generates:  # the workers load it, each for its first job with it
                self.settings.update({"sd_model_checkpoint": self._chosen})
                return None
            job.textinfo = f"Loading {wanted}"
            if self.models.current is None or wanted not in (self.models.current.info.title,
                                                              self.models.current.info.model_name):
                self.addons.controlnets.clear()  # ControlNets of the old family: free their memory
            model = self.models.load(wanted, modules=modules)
            if remember:
                self._remember(model, None if modules is None else tuple(modules))
            return model

        return self.queue.submit(Job(work, owner=owner, kind="load", description=f"load {wanted}"))

    def merge_checkpoints(self, request: MergeRequest, progress=None) -> MergeResult:
        """The Checkpoint Merger: a new file in the checkpoints folder, listed at once. It runs in
        the caller's thread (reading and writing files, beside any generation), one merge at a time;
        `progress(done, total)` is told of each tensor written."""
        return self.merger.merge(request, progress)

    def token_count(self, text: str, steps: int = 20) -> tuple[int, int]:
        """(tokens, limit) for a prompt box's counter, as the loaded model's tokenizer counts:
        the longest text the prompt takes during its steps, LoRA tags left out."""
        model = self.models.current
        if model is None:
            return 0, CHUNK_TOKENS
        family = family_of(model.family)
        embeddings = {} if family.flow else self.addons.embeddings.encoder_options(model)
        encoder = prompt_encoder(family, model.base, GenerationRequest(), embeddings)
        text, _ = extract_extra_networks(text)
        counts = [encoder.token_count(part) for _, part in prompt_schedule(text, max(1, steps))]
        return max(counts)

    def chosen_checkpoint(self) -> str | None:
        """The checkpoint generations are made with now: the one the latest switch asked for
        (even while it waits in the queue), else the loaded one, else the one to load first."""
        if self._chosen:
            return self._chosen
        current = self.models.current
        return current.info.title if current is not None else self.initial_checkpoint(None)

    def pending_load(self) -> Job | None:
        """The checkpoint switch waiting or running on the lane, if any."""
        return next(iter(self.queue.jobs_of_kind("load")), None)

    def unload_checkpoint(self, owner: str = "") -> Job:
        def work(job: Job) -> None:
            self.models.unload()
            self.addons.controlnets.clear()

        return self.queue.submit(Job(work, owner=owner, kind="unload"))

    def initial_checkpoint(self, preferred: str | None) -> str | None:
        """What to load at start: the flag, else the last used, else the first one found."""
        registry = self.models.registry
        for wanted in (preferred, self.settings["sd_model_checkpoint"]):
            if wanted:
                try:
                    return registry.find(wanted).title
                except UserError:
                    log.warning("checkpoint %r not found; choosing another", wanted)
        checkpoints = registry.checkpoints
        return checkpoints[0].title if checkpoints else None

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.queue.shutdown()
