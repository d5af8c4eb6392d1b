"""Measuring one run: denoising speed, time per image, peak memory, host syncs; and comparing
two images.

The denoising time is taken from the first UNet call's start to the last one's end, by hooks on
the UNet module (the transformer of FLUX.1 and SD 3.5; outside any compiled code), the same way
for plain diffusers and the engine.
On a GPU the ends are CUDA events, so the timing itself never makes the CPU wait.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch


class DenoiseTimer:
    """Counts UNet calls and times the span from the first call's start to the last one's end."""

    def __init__(self, unet: torch.nn.Module, device: torch.device):
        self.cuda = device.type == "cuda"
        self.calls = 0
        self._start = self._end = None
        self.window: tuple[float, float] | None = None  # host clock span, for the sync count
        self._handles = [unet.register_forward_pre_hook(self._before),
                         unet.register_forward_hook(self._after)]

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _before(self, module, args):
        if self.calls == 0:
            self._start = self._mark()
            self.window = (time.perf_counter(), time.perf_counter())
            self._cpu_start = time.process_time()

    def _after(self, module, args, output):
        self.calls += 1
        self._end = self._mark()
        self.window = (self.window[0], time.perf_counter())
        self._cpu_end = time.process_time()

    def cpu_seconds(self) -> float:
        """CPU time the whole process spent while denoising: on a shared machine, far less
        disturbed by other programs than the wall clock."""
        return self._cpu_end - self._cpu_start if self._start is not None else float("nan")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def seconds(self) -> float:
        if self._start is None:
            return float("nan")
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1000
        return self._end - self._start

    def its(self) -> float:
        """UNet calls per second (one call per step: the CFG halves go in one batch)."""
        seconds = self.seconds()
        return self.calls / seconds if seconds > 0 else float("nan")


class CallCounter:
    """Forward calls of named modules (the text encoders): how often each side encodes text."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.calls = {name: 0 for name in modules}
        self._handles = [module.register_forward_hook(self._counter(name)) for name, module in modules.items()]

    def _counter(self, name: str):
        def count(module, args, output):
            self.calls[name] += 1
        return count

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class PeakMemory:
    """Peak memory during a block: allocated on the GPU, resident set size on the CPU
    (sampled every 5 ms from a thread, as the OS keeps no resettable peak)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.before = self.peak = 0

    @contextlib.contextmanager
    def measuring(self) -> Iterator["PeakMemory"]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            yield self
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        import psutil

        process = psutil.Process()
        self.before = self.peak = process.memory_info().rss
        done = threading.Event()

        def sample():
            while not done.wait(0.005):
                self.peak = max(self.peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            done.set()
            sampler.join()
            self.peak = max(self.peak, process.memory_info().rss)


class SyncCounter:
    """Host syncs on the GPU inside a time window (torch's sync debug mode warns on each)."""

    def __init__(self):
        self.times: list[float] = []

    @contextlib.contextmanager
    def counting(self, device: torch.device) -> Iterator["SyncCounter"]:
        if device.type != "cuda":
            yield self
            return
        original = warnings.showwarning

        def record(message, category, *args, **kwargs):
            if "synchroniz" in str(message).lower():
                self.times.append(time.perf_counter())
            else:
                original(message, category, *args, **kwargs)

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings():  # puts showwarning back on exit
                warnings.simplefilter("always")
                warnings.showwarning = record
                yield self
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def within(self, window: tuple[float, float] | None) -> int:
        if window is None:
            return 0
        return sum(window[0] <= t <= window[1] for t in self.times)


@dataclass
class Runs:
    """Repeated measurements of one side; medians are what is reported."""

    its: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_step_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    above_bytes: list[int] = field(default_factory=list)  # peak minus what was held before the run
    calls: list[int] = field(default_factory=list)  # denoiser calls per image (one per step when CFG is batched)
    encoder_calls: dict[str, int] = field(default_factory=dict)  # text encoder calls in the last image

    def add(self, timer: DenoiseTimer, seconds: float, cpu_seconds: float, memory: PeakMemory,
            encoders: CallCounter | None = None) -> None:
        if encoders is not None:
            self.encoder_calls = dict(encoders.calls)
        self.its.append(timer.its())
        self.seconds.append(seconds)
        self.cpu_step_seconds.append(timer.cpu_seconds() / max(1, timer.calls))
        self.cpu_seconds.append(cpu_seconds)
        self.peak_bytes.append(memory.peak)
        self.above_bytes.append(memory.peak - memory.before)
        self.calls.append(timer.calls)

    def summary(self) -> dict:
        median = statistics.median
        return {"denoise_its": median(self.its), "seconds_per_image": median(self.seconds),
                "cpu_seconds_per_step": median(self.cpu_step_seconds),
                "cpu_seconds_per_image": median(self.cpu_seconds),
                "peak_memory_gb": max(self.peak_bytes) / 2**30,
                "peak_above_start_gb": max(self.above_bytes) / 2**30, "denoiser_calls": max(self.calls),
                "text_encoder_calls": self.encoder_calls,
                "all_its": self.its, "all_seconds": self.seconds, "all_cpu_seconds": self.cpu_seconds}


def image_difference(a, b) -> dict:
    """How far two 8-bit images are apart: mean and max absolute difference (0-255), PSNR
    (None when identical)."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        return {"same_size": False}
    diff = np.abs(x - y)
    mse = float((diff ** 2).mean())
    return {"same_size": True, "mean_abs": float(diff.mean()), "max_abs": float(diff.max()),
            "psnr_db": None if mse == 0 else float(10 * np.log10(255 ** 2 / mse)),
            "identical": bool(mse == 0)}
