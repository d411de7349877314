"""Where a pipeline runs (cuda → mps → cpu) and in which precision, with the reason.

Half precision (float16) halves memory and is much faster on GPUs, but the CPU has no fast
float16 kernels and some give wrong results, so sdlab never picks it there.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

from .errors import SdlabInputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceChoice:
    """A device, a dtype and why they were chosen."""

    device: torch.device
    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"{self.device} / {str(self.dtype).replace('torch.', '')}: {self.reason}"


def available_device() -> tuple[torch.device, str]:
    """The best device on this machine: cuda, then Apple's mps, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), f"CUDA GPU found ({torch.cuda.get_device_name(0)})"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps"), "Apple GPU (MPS) found"
    return torch.device("cpu"), "no GPU found, using the CPU"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'fp16', 'float16' or torch.float16 → torch.float16 (and so on)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SdlabInputError(f"dtype must be a floating-point type, one of {sorted(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise SdlabInputError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def pick_device(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> DeviceChoice:
    """Choose the device and dtype for a pipeline.

    `device="auto"` takes cuda, then mps, then cpu. `dtype="auto"` takes float16 on a GPU and
    float32 on the CPU. Asking for float16 on the CPU is an error, because it would be slow
    and some CPU kernels do not support it.
    """
    if device == "auto":
        dev, reason = available_device()
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise SdlabInputError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SdlabInputError("device='cuda' was asked for but no CUDA GPU is visible; "
                                  "use device='auto' or 'cpu' (in Colab: Runtime → Change runtime type → GPU)")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SdlabInputError("device='mps' is Apple's GPU, which this machine does not have; use "
                                  "device='auto' or 'cpu'")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise SdlabInputError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}")
        reason = "asked for"
    if dtype == "auto":
        chosen = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
        why = "half precision on the GPU" if chosen == torch.float16 else "full precision on the CPU"
        return DeviceChoice(dev, chosen, f"{reason}; {why}")
    chosen = parse_dtype(dtype)
    if chosen == torch.float16 and dev.type == "cpu":
        raise SdlabInputError("dtype=float16 is for GPUs: the CPU has no fast float16 kernels and some "
                              "give wrong results; use dtype='float32' (or 'bfloat16') on the CPU")
    return DeviceChoice(dev, chosen, f"{reason}; dtype asked for")


def hardware_report() -> dict[str, str]:
    """What this machine offers for diffusion: versions, device, memory (no printing)."""
    import diffusers  # heavy: loaded only for its version in the report
    import transformers  # heavy: loaded only for its version in the report

    report = {"python": platform.python_version(), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "transformers": transformers.__version__,
              "cpu cores": str(os.cpu_count())}
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        report["memory"] = f"{pages * page_size / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        report["memory"] = "unknown"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
        report["bfloat16 on gpu"] = str(torch.cuda.is_bf16_supported())
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        report["gpu"] = "Apple GPU (MPS)"
    else:
        report["gpu"] = "none"
    report["chosen"] = str(pick_device())
    return report
