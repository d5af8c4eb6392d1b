"""Where a loaded model's weights live between and during jobs: the `memory_mode` setting.

- none: every module on the compute device (fastest, most VRAM).
- medvram: diffusers' model CPU offload (`enable_model_cpu_offload`): each whole model (text
  encoders, UNet, VAE) waits in RAM and moves to the GPU when it runs, sending the one before it
  back. Peak VRAM: the UNet and its activations; cost: a few whole-model copies per image.
- lowvram: diffusers' group offloading at leaf level: each layer's weights come to the GPU just
  before the layer runs and leave after it. On CUDA the next layer is copied on a side stream while
  the current one computes (`use_stream`), hiding most of the copying. Peak VRAM: activations plus
  a few layers. Chosen over accelerate's sequential offload (`enable_sequential_cpu_offload`: the
  same granularity and peak, but synchronous copies from pageable memory, so slower) and over
  block-level groups (with prefetching, SDXL's mid block, its 1.4 GB down block and the 2.3 GB up
  block after it are resident together: about 4.5 of the UNet's 4.9 GB in fp16, hardly saving
  anything). `python -m bench.memory_modes --compare` measures all three on a GPU.
  The VAE is offloaded block by block without a stream: decoding may switch it to float32 for
  the rest of the session, which streamed groups would undo (they copy back their pinned fp16
  copies).

The hooks sit on the module objects, which every pipeline made with from_pipe shares, so one
placement serves txt2img, img2img and inpainting. It is applied when the mode (or a module, like a
newly chosen VAE) changes, at the start of the next job, not around each job: moving whole models
between RAM and VRAM per job would cost seconds for nothing. ControlNets are per job anyway, so
they get their hooks for the job and lose them after.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

import torch

from engine.devices import free_memory
from engine.memory.memory_modes import LOWVRAM, MEDVRAM, NONE, T5_CPU

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


class Placement:
    """The memory mode one loaded checkpoint's modules are in, and the means to change it."""

    def __init__(self, device: torch.device | str, offload_on_cpu: bool = False):
        self.device = torch.device(device)  # where the model computes
        # On a CPU there is no VRAM to save, so the offload modes act as none there, unless this
        # is set: then RAM stands in for VRAM, which lets tests and the benchmark run the hooks.
        self.offload_on_cpu = offload_on_cpu
        self.mode = NONE
        self._modules: list[torch.nn.Module] = []  # what the current mode was applied to
        self._told_cpu = False

    def effective(self, mode: str) -> str:
        if mode != NONE and self.device.type == "cpu" and not self.offload_on_cpu:
            if not self._told_cpu:
                log.info("memory_mode %s has no effect on the CPU (there is no VRAM to save)", mode)
                self._told_cpu = True
            return NONE
        return mode

    @property
    def resting_device(self) -> torch.device:
        """Where weights wait while they are not computing."""
        return self.device if self.mode in (NONE, T5_CPU) else CPU

    def ensure(self, mode: str, pipes: list) -> bool:
        """Put the modules of `pipes` (a base pipeline first, then those made from it) as `mode`
        says. A no-op, returning False, when they already are."""
        mode = self.effective(mode)
        modules = pipeline_modules(pipes[0])
        if mode == self.mode and _same(modules.values(), self._modules):
            return False
        self._clear(pipes, modules.values())
        if mode != NONE:  # a module no pipeline holds now (the VAE before a VAE file) waits in RAM
            kept = {id(m) for m in modules.values()}
            for module in self._modules:
                if id(module) not in kept:
                    module.to(CPU)
        self.mode, self._modules = NONE, []  # what holds if applying the new mode fails
        if mode == MEDVRAM:
            # The chain (text encoders, UNet, VAE) goes on the base pipeline's modules, shared with
            # the others; only the base keeps the list of hooks that its calls renew at their end.
            pipes[0].enable_model_cpu_offload(device=self.device)
        elif mode == LOWVRAM:
            for name, module in modules.items():
                _group_offload(module, self.device, layer_by_layer=name != "vae")
        else:
            on_cpu = t5_encoders(modules) if mode == T5_CPU else {}
            for name, module in modules.items():
                module.to(CPU if name in on_cpu else self.device)
        free_memory()
        self.mode, self._modules = mode, list(modules.values())
        log.info("memory mode: %s", mode)
        return True

    def release(self, pipes: list) -> None:
        """Every hook off and the mode forgotten, the weights left where they are: for a model set
        aside in RAM, which the next ensure() places from scratch."""
        self._clear(pipes, pipeline_modules(pipes[0]).values())
        self.mode, self._modules = NONE, []

    def _clear(self, pipes: list, modules: Iterable[torch.nn.Module]) -> None:
        """Take every offload hook off; the weights stay where they are (RAM, mostly)."""
        for pipe in pipes:
            # Also empties the pipeline's own hook list: left there, its next call would put model
            # offload back (diffusers renews it at the end of each call, and a LoRA load may have
            # put such a list on any pipeline).
            pipe.remove_all_hooks()
        for module in {id(m): m for m in [*self._modules, *modules]}.values():
            remove_offload_hooks(module)

    @contextlib.contextmanager
    def controlnets(self, nets: Iterable[torch.nn.Module]) -> Iterator[None]:
        """For one job: the ControlNets offloaded like the UNet they run beside. They wait in RAM
        before and after (the caller puts them on `resting_device`)."""
        nets = list({id(net): net for net in nets}.values())
        if self.mode in (NONE, T5_CPU) or not nets:
            yield
            return
        hooked = []
        try:
            for net in nets:
                if self.mode == MEDVRAM:
                    # Outside the model chain, as diffusers does for ControlNet: it runs at every
                    # step beside the UNet, so chaining the two would swap them at every step.
                    from accelerate import cpu_offload_with_hook
                    cpu_offload_with_hook(net, self.device)
                else:
                    _group_offload(net, self.device, layer_by_layer=True)
                hooked.append(net)
            yield
        finally:
            for net in hooked:
                remove_offload_hooks(net)
                net.to(CPU)


def pipeline_modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def t5_encoders(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """The T5 text encoders among a pipeline's modules (FLUX.1's and SD 3.x's T5-XXL): what the
    t5-cpu mode keeps on the CPU."""
    return {name: module for name, module in modules.items() if type(module).__name__.startswith("T5")}


def _same(modules: Iterable[torch.nn.Module], placed: list[torch.nn.Module]) -> bool:
    return [id(m) for m in modules] == [id(m) for m in placed]


def _group_offload(module: torch.nn.Module, device: torch.device, layer_by_layer: bool) -> None:
    from diffusers.hooks import apply_group_offloading

    if layer_by_layer:
        # Weights are pinned in RAM once, up front (low_cpu_mem_usage=False), so each copy to the
        # GPU is a fast asynchronous one. record_stream stays off: it is faster but holds freed
        # layers' memory a little longer, and lowvram is about the peak.
        streams = device.type == "cuda"
        apply_group_offloading(module, onload_device=device, offload_device=CPU, offload_type="leaf_level",
                               use_stream=streams)
    else:
        apply_group_offloading(module, onload_device=device, offload_device=CPU, offload_type="block_level",
                               num_blocks_per_group=1)


def remove_offload_hooks(module: torch.nn.Module) -> None:
    """Take accelerate's (model or sequential offload) and diffusers' (group offload) hooks off a
    module and its children. The weights stay where they are."""
    from accelerate.hooks import remove_hook_from_module
    from diffusers.hooks import HookRegistry, group_offloading

    remove_hook_from_module(module, recurse=True)
    if group_offloading._is_group_offload_enabled(module):
        # diffusers 0.42 has no public call for this; these are the names its group offloading
        # registers its hooks under (and removes them by, when it re-applies itself after a LoRA).
        registry = HookRegistry.check_if_exists_or_initialize(module)
        for name in (group_offloading._GROUP_OFFLOADING, group_offloading._LAYER_EXECUTION_TRACKER,
                     group_offloading._LAZY_PREFETCH_GROUP_OFFLOADING):
            registry.remove_hook(name, recurse=True)
    for child in module.modules():
        # Both put back the forward they found as an attribute of the instance: the class's own,
        # bound. Drop that, so the module is as it was and whatever looks for a patched forward
        # (or patches one) sees none.
        forward = child.__dict__.get("forward")
        if getattr(forward, "__self__", None) is child and \
                getattr(forward, "__func__", None) is type(child).forward:
            del child.forward


def compute_device(module: torch.nn.Module) -> torch.device:
    """Where a module computes. With offload hooks its weights may be in RAM between calls, so
    where they are says nothing; inputs must go where the hook will bring the weights."""
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    from diffusers.hooks import group_offloading

    try:
        return torch.device(group_offloading._get_group_onload_device(module))
    except ValueError:  # not group offloaded
        return next(module.parameters()).device
