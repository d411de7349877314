"""Side-by-side timings: the original course's way (a Python loop, one image per call, float32)
against sdlab's batched calls, on the same images, measured in the same run.

    sdlab bench --quick                                   # CPU, sdlab-tiny, under a minute
    sdlab bench --model sd15-random --fast --flop-limit 9.9e14    # a GPU, SD 1.5's work at 512²

On a GPU, "auto" precision is float16, so sdlab's rows run in half precision while the course's
way stays in float32 (what the original notebooks do); rows for each step in between show what
batching, half precision, channels_last and torch.compile each give.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .generation import generate, model_defaults
from .pipelines import load_pipeline, speed_up
from .sweeps import guidance_sweep

GUIDANCE_VALUES = [2, 5, 8, 11, 14, 17, 20]  # the course's guidance 2–21 sweep


@dataclass
class Timing:
    name: str
    seconds: float
    images: int
    peak_mb: float

    @property
    def per_image(self) -> float:
        return self.seconds / self.images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(name: str, images: int, device: torch.device, fn) -> Timing:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return Timing(name, time.perf_counter() - start, images, peak_memory_mb(device))


def unet_flops_per_image_step(pipe, height: int, width: int) -> int:
    """FLOPs of one UNet evaluation for one image with guidance (2 rows: prompt and empty)."""
    from torch.utils.flop_counter import FlopCounterMode

    f = pipe.vae_scale_factor
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)  # count the plain module, not a compiled one
    x = torch.zeros(2, unet.config.in_channels, height // f, width // f, device=pipe.device, dtype=unet.dtype)
    text = torch.zeros(2, 77, pipe.text_encoder.config.hidden_size, device=pipe.device, dtype=unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([500], device=pipe.device), encoder_hidden_states=text)
    return counter.get_total_flops()


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory since the last reset, or the process's peak RSS on the CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dtype_name(pipe) -> str:
    return str(pipe.unet.dtype).replace("torch.", "")


def run(model: str = "sdlab-tiny", images: int = 8, steps: int | None = None, prompt: str = "a small red circle "
        "on a blue background", seed: int = 0, device: str = "auto", dtype: str = "auto",
        flop_limit: float | None = None, fast: bool = False, size: int | None = None) -> Iterator[str]:
    """Measure, yielding the report's lines as they come (the caller prints them).

    fast: also time the sweep and the batch with `speed_up`: channels_last and fused QKV, then
    torch.compile of the UNet (its compile time printed apart): on a GPU with CUDA graphs
    (torch.compile's "reduce-overhead", which also fuses kernels; the default mode if graphs fail).
    size: image height and width (default: the model's; smaller makes SD 1.5's work CPU-sized).
    """
    pipe = load_pipeline(model, device=device, dtype=dtype, progress=False)
    dev = pipe.device
    # the course's way runs in float32 whatever sdlab picks; the same seeded weights if rebuilt
    course = pipe if pipe.unet.dtype == torch.float32 else load_pipeline(model, device=device, dtype="float32",
                                                                         progress=False)
    steps = steps or model_defaults(pipe)[0]
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    hw = dict(height=size, width=size, num_inference_steps=steps)
    flops = unet_flops_per_image_step(pipe, size, size) * steps
    yield (f"model {model} · {size}×{size} · {steps} steps · {pipe.scheduler.__class__.__name__} · "
           f"{pipe.sdlab_device} · torch {torch.__version__}")
    yield f"UNet work: {flops / 1e9:.1f} GFLOP per image (with guidance)"
    yield f"{'':50} {'s total':>8} {'s/image':>8} {'images/s':>9} {'TFLOP/s':>8} {'peak MB':>8}"

    def row(t: Timing) -> str:
        achieved = flops * t.images / t.seconds / 1e12
        return (f"{t.name:50} {t.seconds:8.2f} {t.per_image:8.3f} {t.images / t.seconds:9.2f} {achieved:8.3f} "
                f"{t.peak_mb:8.0f}")

    for p in {id(course): course, id(pipe): pipe}.values():  # warm-up: first calls allocate and tune
        generate(p, prompt, seed=seed, **hw | dict(num_inference_steps=2))
        guidance_sweep(p, prompt, GUIDANCE_VALUES[:2], seed=seed, **hw | dict(num_inference_steps=2))
    fp32, sd = _dtype_name(course), _dtype_name(pipe)

    def sweep():
        return guidance_sweep(pipe, prompt, GUIDANCE_VALUES, seed=seed, **hw)

    def batch():
        return generate(pipe, prompt, seed=seed, num_images_per_prompt=images, **hw)

    timings = {}

    def compiled_rows(mode, key: str, what: str, label: str, calls: int):
        """Compile the UNet with `mode`, then time the sweep and the batch (compile time apart)."""
        speed_up(pipe, channels_last=False, compile=mode)
        for kind, name, count, fn in (("sweep", "sweep", n, sweep), ("batch", f"batch of {images}", images, batch)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()  # compiles for this batch shape
            yield f"  ({what} for the {name}'s shape took {time.perf_counter() - start:.0f} s)"
            timings[f"{kind}_{key}"] = _timed(f"{name} + {label}", count, dev, fn)
            yield row(timings[f"{kind}_{key}"])

    timings["loop"] = _timed(f"loop, one image per call, {fp32} (course's way)", images, dev, lambda: [
        generate(course, prompt, seed=seed + i, **hw) for i in range(images)])
    yield row(timings["loop"])
    timings["batch"] = _timed(f"one batch of {images}, {sd}", images, dev, batch)
    yield row(timings["batch"])
    n = len(GUIDANCE_VALUES)
    timings["g_loop"] = _timed(f"{n} guidance values, one call each, {fp32}", n, dev, lambda: [
        generate(course, prompt, seed=seed, guidance_scale=g, **hw) for g in GUIDANCE_VALUES])
    yield row(timings["g_loop"])
    if course is not pipe:
        timings["g_loop_half"] = _timed(f"{n} guidance values, one call each, {sd}", n, dev, lambda: [
            generate(pipe, prompt, seed=seed, guidance_scale=g, **hw) for g in GUIDANCE_VALUES])
        yield row(timings["g_loop_half"])
    timings["sweep"] = _timed(f"guidance sweep, one batched loop, {sd}", n, dev, sweep)
    yield row(timings["sweep"])
    if fast:
        speed_up(pipe, channels_last=True, fuse_qkv=True)
        sweep(), batch()
        timings["sweep_cl"] = _timed("sweep + channels_last + fused QKV", n, dev, sweep)
        yield row(timings["sweep_cl"])
        timings["batch_cl"] = _timed(f"batch of {images} + channels_last + fused QKV", images, dev, batch)
        yield row(timings["batch_cl"])
        compiled = False
        if dev.type == "cuda":  # CUDA graphs: one replay per UNet call instead of hundreds of launches
            try:
                yield from compiled_rows("reduce-overhead", "graphs", "compiling with CUDA graphs",
                                         "all of the above + torch.compile with CUDA graphs", calls=2)
                compiled = True
            except Exception as err:  # noqa: BLE001 - a report line, then torch.compile's default mode
                yield f"  (CUDA graphs failed: {type(err).__name__}: {str(err).splitlines()[0][:200]})"
        if not compiled:
            yield from compiled_rows(True, "compiled", "torch.compile", "all of the above + torch.compile", calls=1)
    if dev.type != "cuda":
        yield f"peak memory (process RSS): {peak_memory_mb():.0f} MB"
    best_sweep = min((t for k, t in timings.items() if k.startswith("sweep")), key=lambda t: t.seconds)
    best_batch = min((t for k, t in timings.items() if k.startswith("batch")), key=lambda t: t.per_image)
    if flop_limit:
        best = max(flops * t.images / t.seconds for t in (best_batch, best_sweep))
        yield f"best path reaches {best / flop_limit:.1%} of the {flop_limit / 1e12:.1f} TFLOP/s limit"
    yield (f"batch speedup: {timings['loop'].seconds / best_batch.seconds:.1f}x, "
           f"guidance-sweep speedup: {timings['g_loop'].seconds / best_sweep.seconds:.1f}x")
