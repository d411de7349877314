"""Side-by-side timings: the original course's way (a Python loop, one image per call, float32)
against sdlab's batched calls, on the same images, measured in the same run.

    sdlab bench --quick                                   # CPU, sdlab-tiny, under a minute
    sdlab bench --model sd15-random --fast --flop-limit 9.9e14    # a GPU, SD 1.5's work at 512²

On a GPU, "auto" precision is float16, so sdlab's rows run in half precision while the course's
way stays in float32 (what the original notebooks do); rows for each step in between show what
batching, half precision, channels_last, the attention kernel and torch.compile each give.
`--profile` adds where the time of one batch goes (`sdlab.bench.profiling`).
"""
from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from ..errors import SdlabInputError
from ..generation import MAX_IMAGES, generate, model_defaults
from ..pipelines import load_pipeline
from ..speed import speed_up
from ..sweeps import guidance_sweep
from .profiling import KINDS, count_flops, profile, share, synchronize

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


def _timed(name: str, images: int, device: torch.device, fn) -> Timing:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return Timing(name, time.perf_counter() - start, images, peak_memory_mb(device))


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory since the last reset, or the process's peak RSS on the CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def _cudnn_timing():
    """cuDNN times its convolution algorithms on each new shape and keeps the fastest (torch's
    `cudnn.benchmark`: a setting for the whole process, so it is put back after)."""
    before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _dtype_name(pipe) -> str:
    return str(pipe.unet.dtype).replace("torch.", "")


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def _or_say(what: str, lines: Iterator[str]) -> Iterator[str]:
    """The report's `lines`; where they fail, a line saying what failed, and the run goes on (an
    attention kernel or cuDNN's tuning that fails on a GPU is a finding, not the end)."""
    try:
        yield from lines
    except Exception as err:  # noqa: BLE001 - the rows that follow do not need these
        yield f"  ({what} failed: {_first_line(err)})"


def _compiled_rows(pipe, compile_mode: str | None, device: torch.device, both_rows) -> Iterator[str]:
    """Compile the UNet in `compile_mode` (by default on a GPU with CUDA graphs, "reduce-overhead",
    which also fuses kernels; torch.compile's default mode if that fails) and time both rows."""
    if pipe.sdlab_attention != "default":
        yield f"  (compiling with {pipe.sdlab_attention} attention, the faster for the sweep)"
    if torch.backends.cudnn.benchmark:
        yield "  (compiling with cuDNN timing its convolutions, the faster for the sweep)"
    mode = compile_mode or ("reduce-overhead" if device.type == "cuda" else "default")
    if mode != "default":  # e.g. CUDA graphs: one replay per UNet call instead of hundreds of launches
        try:
            speed_up(pipe, channels_last=False, compile=mode)
            yield from both_rows(mode, f"… + compiled ({mode})", f"compiling in mode {mode}", warm_calls=2)
            return
        except Exception as err:  # noqa: BLE001 - a report line, then torch.compile's default mode
            yield f"  (compiling in mode {mode} failed: {_first_line(err)})"
    speed_up(pipe, channels_last=False, compile=True)
    yield from both_rows("compiled", "… + compiled", "compiling")


def run(model: str = "sdlab-tiny", images: int = 8, steps: int | None = None, prompt: str = "a small red circle "
        "on a blue background", seed: int = 0, device: str = "auto", dtype: str = "auto",
        flop_limit: float | None = None, fast: bool = False, size: int | None = None,
        attention: list[str] | None = None, tune_convolutions: bool | None = None,
        compile_mode: str | None = None, profile_batch: bool = False) -> Iterator[str]:
    """Measure, yielding the report's lines as they come (the caller prints them).

    fast: also time the sweep and the batch with `speed_up`: channels_last and fused QKV, then each
    of the `attention` kernels (default: cuDNN's on a GPU, none on a CPU), then with the fastest
    and, if `tune_convolutions` (default: on a GPU), cuDNN timing its convolution algorithms, then
    torch.compile of the UNet with what was faster (its compile time printed apart) in
    `compile_mode`: by default on a GPU CUDA graphs ("reduce-overhead", which also fuses kernels),
    falling back to the default mode.
    size: image height and width (default: the model's; smaller makes SD 1.5's work CPU-sized).
    profile_batch: also profile one batch call, before compiling and after.
    """
    # 1. Check inputs, before loading anything (steps and size are checked as any generation's)
    if not isinstance(images, int) or not 1 <= images <= MAX_IMAGES:
        raise SdlabInputError(f"images must be a whole number from 1 to {MAX_IMAGES} (one batch), got {images!r}")
    if flop_limit is not None and not flop_limit > 0:
        raise SdlabInputError(f"flop_limit must be the device's FLOP/s, above 0, got {flop_limit!r}; e.g. 3.3e11 "
                              f"for a 2-core AVX-512 CPU in float32, 9.9e14 for an H100 or H200 in float16")
    # 2. Load the pipelines: sdlab's, and the course's in float32
    pipe = load_pipeline(model, device=device, dtype=dtype, progress=False)
    dev = pipe.device
    # the course's way runs in float32 whatever sdlab picks; the same seeded weights if rebuilt
    course = pipe if pipe.unet.dtype == torch.float32 else load_pipeline(model, device=device, dtype="float32",
                                                                         progress=False)
    steps = model_defaults(pipe)[0] if steps is None else steps
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor if size is None else size
    hw = dict(height=size, width=size, num_inference_steps=steps)
    work = count_flops(lambda: generate(pipe, prompt, seed=seed, **hw))
    flops = sum(work.values())
    yield (f"model {model} · {size}×{size} · {steps} steps · {pipe.scheduler.__class__.__name__} · "
           f"{pipe.sdlab_device} · torch {torch.__version__}")
    yield (f"work: {flops / 1e9:.1f} GFLOP per image (text encoder, UNet × {steps} steps with guidance, VAE "
           f"decode): " + ", ".join(f"{kind} {share(work[kind], flops)}" for kind in KINDS[:3]))
    yield f"{'':56} {'s total':>8} {'s/image':>8} {'images/s':>9} {'TFLOP/s':>8} {'peak MB':>8}"

    def row(t: Timing) -> str:
        achieved = flops * t.images / t.seconds / 1e12
        return (f"{t.name:56} {t.seconds:8.2f} {t.per_image:8.3f} {t.images / t.seconds:9.2f} {achieved:8.3f} "
                f"{t.peak_mb:8.0f}")

    for p in {id(course): course, id(pipe): pipe}.values():  # warm-up: first calls allocate and tune
        generate(p, prompt, seed=seed, **hw | dict(num_inference_steps=2))
        guidance_sweep(p, prompt, GUIDANCE_VALUES[:2], seed=seed, **hw | dict(num_inference_steps=2))
    fp32, sd = _dtype_name(course), _dtype_name(pipe)

    def sweep():
        return guidance_sweep(pipe, prompt, GUIDANCE_VALUES, seed=seed, **hw)

    def batch():
        return generate(pipe, prompt, seed=seed, num_images_per_prompt=images, **hw)

    timings, n = {}, len(GUIDANCE_VALUES)

    def both_rows(key: str, label: str, compiling: str | None = None, warm_calls: int = 1):
        """Time the sweep and the batch as the pipeline now stands, each after `warm_calls` untimed
        calls (which compile for its batch shape, their time printed apart, when `compiling`)."""
        for kind, name, count, fn in (("sweep", "sweep", n, sweep), ("batch", f"batch of {images}", images, batch)):
            start = time.perf_counter()
            for _ in range(warm_calls):
                fn()
            if compiling:
                yield f"  ({compiling} for the {name}'s shape took {time.perf_counter() - start:.0f} s)"
            timings[f"{kind}_{key}"] = _timed(f"{name} + {label}", count, dev, fn)
            yield row(timings[f"{kind}_{key}"])

    timings["loop"] = _timed(f"loop, one image per call, {fp32} (course's way)", images, dev, lambda: [
        generate(course, prompt, seed=seed + i, **hw) for i in range(images)])
    yield row(timings["loop"])
    timings["batch"] = _timed(f"one batch of {images}, {sd}", images, dev, batch)
    yield row(timings["batch"])
    timings["g_loop"] = _timed(f"{n} guidance values, one call each, {fp32}", n, dev, lambda: [
        generate(course, prompt, seed=seed, guidance_scale=g, **hw) for g in GUIDANCE_VALUES])
    yield row(timings["g_loop"])
    if course is not pipe:
        timings["g_loop_half"] = _timed(f"{n} guidance values, one call each, {sd}", n, dev, lambda: [
            generate(pipe, prompt, seed=seed, guidance_scale=g, **hw) for g in GUIDANCE_VALUES])
        yield row(timings["g_loop_half"])
    timings["sweep"] = _timed(f"guidance sweep, one batched loop, {sd}", n, dev, sweep)
    yield row(timings["sweep"])
    batch_work = Counter({kind: count * images for kind, count in work.items()})
    with ExitStack() as settings:  # torch's process-wide settings that a faster row keeps, put back at the end
        if fast:
            speed_up(pipe, channels_last=True, fuse_qkv=True)
            yield from both_rows("cl", "channels_last + fused QKV")
            kernels = ["cudnn"] if attention is None and dev.type == "cuda" else attention or []
            for kernel in kernels:
                speed_up(pipe, channels_last=False, attention=kernel)
                yield from _or_say(f"{kernel} attention", both_rows(kernel, f"… + {kernel} attention"))
            timed = [key for key in ("cl", *kernels) if f"sweep_{key}" in timings and f"batch_{key}" in timings]
            fastest = min(timed, key=lambda key: timings[f"sweep_{key}"].seconds)
            speed_up(pipe, channels_last=False, attention="default" if fastest == "cl" else fastest)
            if tune_convolutions or (tune_convolutions is None and dev.type == "cuda"):
                settings.enter_context(_cudnn_timing())
                yield from _or_say("cuDNN-timed convolutions", both_rows("tuned", "… + cuDNN-timed convolutions"))
                tuned = timings.get("sweep_tuned")
                if tuned is None or tuned.seconds > timings[f"sweep_{fastest}"].seconds:
                    settings.close()  # failed or slower: torch's usual choice of algorithms again
        if profile_batch:
            name = f"one batch of {images}"
            yield from _or_say(f"profiling {name}", profile(name, batch, dev, batch_work))
        if fast:
            yield from _compiled_rows(pipe, compile_mode, dev, both_rows)
            if profile_batch:
                name = f"the compiled batch of {images}"
                yield from _or_say(f"profiling {name}", profile(name, batch, dev, batch_work))
    if dev.type != "cuda":
        yield f"peak memory (process RSS): {peak_memory_mb():.0f} MB"
    best_sweep = min((t for k, t in timings.items() if k.startswith("sweep")), key=lambda t: t.seconds)
    best_batch = min((t for k, t in timings.items() if k.startswith("batch")), key=lambda t: t.per_image)
    if flop_limit:
        best = max(flops * t.images / t.seconds for t in (best_batch, best_sweep))
        yield f"best path reaches {best / flop_limit:.1%} of the {flop_limit / 1e12:.1f} TFLOP/s limit"
    yield (f"batch speedup: {timings['loop'].seconds / best_batch.seconds:.1f}x, "
           f"guidance-sweep speedup: {timings['g_loop'].seconds / best_sweep.seconds:.1f}x")
