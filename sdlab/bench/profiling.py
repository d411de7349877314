"""Where a diffusion model's work and time go: its FLOPs counted by kind (convolution, attention,
matrix products) with torch's FlopCounterMode, and the time of a call profiled by the same kinds,
plus norms and the rest, each with the rate it runs at. `sdlab bench --profile` prints both.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

KINDS = ("convolution", "attention", "matmul", "norm")  # the work a diffusion model's time goes to
#: how torch's ops and the GPU's kernels (cuDNN, cuBLAS, flash-attention, Triton's fused ones) name each kind;
#: attention first, since cuDNN's attention kernel is a "flash_fprop", as its convolutions are "fprop"s
_NAME_MARKS = (("attention", re.compile(r"attention|fmha|flash|sdpa")), ("convolution", re.compile(r"conv|fprop")),
               ("matmul", re.compile(r"gemm|nvjet|linear|matmul|(?<![a-z0-9])(add|b|baddb)?mm(?![a-z0-9])")),
               ("norm", re.compile(r"norm")))


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings of asynchronous kernels are otherwise the launch's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn) -> Counter:
    """FLOPs of everything `fn()` runs, by kind (convolution, attention, matmul), with torch's
    FlopCounterMode. (torch does not count its CPU flash-attention kernel itself; this does.)"""
    cpu_flash = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_flash) as counter:
        fn()
    flops = Counter()
    for op, count in counter.get_flop_counts()["Global"].items():
        flops[_kind_by_name(str(op)) or "matmul"] += count
    return flops


def share(part: float, whole: float) -> str:
    """A part of a whole as a percentage ("-" for a whole of nothing)."""
    return f"{part / whole:.0%}" if whole else "-"


def _kind_by_name(name: str) -> str | None:
    """The kind of work an op or a kernel does, read from its name (None: elementwise and the rest)."""
    name = name.lower()
    return next((kind for kind, marks in _NAME_MARKS if marks.search(name)), None)


def _kind_of(event) -> str | None:
    """The kind of a profiled op: that of its outermost caller with one (`aten::linear` calling
    `aten::addmm` is one matrix product; attention's own matrix products are attention)."""
    kind = None
    while event is not None:
        kind, event = _kind_by_name(event.name) or kind, event.cpu_parent
    return kind


def _time_by_kind(prof, on_gpu: bool) -> tuple[Counter, float]:
    """Seconds by kind and in all: on a CPU the time of torch's ops, each op's own time going to the
    kind of its outermost caller with one; on a GPU the kernels' time, each kernel going to the kind
    of the op that launched it or else, as for the kernels a CUDA graph replays, of its own name."""
    spent, named, launched = Counter(), Counter(), Counter()
    cpu_events = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    for event in cpu_events:
        caller = _kind_of(event)
        if on_gpu:
            for kernel in event.kernels:
                spent[caller or _kind_by_name(kernel.name) or "other"] += kernel.duration / 1e6
                launched[_kind_by_name(kernel.name) or "other"] += kernel.duration / 1e6
        else:  # compiled code's own kernels run inside its annotations, so those count too
            spent[caller or "other"] += event.self_cpu_time_total / 1e6
    if on_gpu:  # kernels no op launched, by their names; the total as torch's profiler table sums it
        for event in prof.events():
            if event.device_type != DeviceType.CPU and not getattr(event, "is_user_annotation", False):
                named[_kind_by_name(event.name) or "other"] += event.self_device_time_total / 1e6
        spent.update(named - launched)
        return spent, sum(named.values())
    return spent, sum(spent.values())


def profile(name: str, fn, device: torch.device, flops: Counter | None = None, top: int = 6) -> Iterator[str]:
    """Where the time of one `fn()` goes, by kind of work, with each kind's FLOPs (counted here
    unless given) and rate; then the `top` kernels (on a GPU; torch ops on a CPU) that took longest."""
    on_gpu = device.type == "cuda"
    flops = flops or count_flops(fn)
    fn()  # warm, after counting
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    synchronize(device)
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        fn()
        synchronize(device)
    wall = time.perf_counter() - start
    spent, total = _time_by_kind(prof, on_gpu)
    clock = "GPU kernel time" if on_gpu else "CPU time of torch's ops"
    yield f"where {name} spends its {clock}: {total:.3f} s, {share(total, wall)} of {wall:.3f} s wall (profiled)"
    yield f"  {'kind':14} {'s':>8} {'time':>6} {'work':>6} {'TFLOP/s':>9}"
    for kind in (*KINDS, "other"):
        rate = f"{flops[kind] / spent[kind] / 1e12:9.3f}" if flops[kind] and spent[kind] else f"{'-':>9}"
        yield (f"  {kind:14} {spent[kind]:8.3f} {share(spent[kind], total):>6} "
               f"{share(flops[kind], sum(flops.values())):>6} {rate}")
    rows = [r for r in prof.key_averages() if (r.device_type != torch.autograd.DeviceType.CPU) == on_gpu
            and not getattr(r, "is_user_annotation", False)]
    rows.sort(key=lambda r: r.self_device_time_total if on_gpu else r.self_cpu_time_total, reverse=True)
    yield f"  the {top} {'kernels' if on_gpu else 'ops'} that took longest:"
    for r in rows[:top]:
        seconds = (r.self_device_time_total if on_gpu else r.self_cpu_time_total) / 1e6
        yield f"    {share(seconds, total):>4} {r.count:6}×  {r.key[:90]}"
