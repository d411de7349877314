"""GPU speed-ups for a loaded pipeline, all opt-in and all keeping the images (within float
rounding): memory layout, fused projections, the attention kernel and torch.compile.

`sdlab bench --fast` times each of them side by side; `benchmarks/RESULTS.md` has the figures.
"""
from __future__ import annotations

from .errors import SdlabInputError

#: `torch.compile` modes `speed_up` accepts (True is "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: torch's scaled_dot_product_attention kernels `speed_up(attention=...)` can put first ("default": torch's order).
ATTENTION_KERNELS = {"default": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                     "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


class PreferredKernelAttnProcessor:
    """Runs a diffusers attention processor with one of torch's attention kernels tried first.

    The others stay behind it, for shapes the preferred kernel cannot take (cuDNN's attention, for
    one, has limits on head size), so a model never fails for the choice; `sdlab bench --profile`
    shows which kernels really ran. (A CPU has only flash and math kernels and tries flash first
    whatever the order: there, only "math" changes anything.)
    """

    def __init__(self, processor, kernel: str):
        from torch.nn.attention import SDPBackend  # heavy: the CLI's parser imports this module without torch

        self.processor, self.kernel = processor, kernel
        first = getattr(SDPBackend, ATTENTION_KERNELS[kernel])
        rest = [getattr(SDPBackend, name) for name in ATTENTION_KERNELS.values() if name]
        # math, the reference implementation, takes every shape: chosen, it is the only one
        self.order = [first] if first == SDPBackend.MATH else [first, *(b for b in rest if b != first)]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        from torch.nn.attention import sdpa_kernel  # heavy: the CLI's parser imports this module without torch

        with sdpa_kernel(self.order, set_priority=True):
            return self.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=attention_mask, temb=temb, **kwargs)


def _prefer_attention_kernel(unet, kernel: str) -> None:
    """Wrap each of the UNet's attention processors (unwrapping an earlier choice first)."""
    processors = {name: proc.processor if isinstance(proc, PreferredKernelAttnProcessor) else proc
                  for name, proc in unet.attn_processors.items()}
    if ATTENTION_KERNELS[kernel]:
        processors = {name: PreferredKernelAttnProcessor(proc, kernel) for name, proc in processors.items()}
    unet.set_attn_processor(processors)


def speed_up(pipe, *, channels_last: bool = True, fuse_qkv: bool = False, attention: str | None = None,
             compile: bool | str = False, compile_vae: bool | None = None):
    """Opt-in speed-ups for GPUs (the same images, within float rounding):

    channels_last: UNet and VAE convolutions in NHWC, the layout tensor cores read best.
    fuse_qkv: one matrix product for attention's query, key and value (diffusers'
    `fuse_qkv_projections`) instead of three.
    attention: which of torch's scaled_dot_product_attention kernels the UNet tries first, one of
    `ATTENTION_KERNELS` ("cudnn" is NVIDIA's, tuned for recent GPUs; torch's own order puts the
    flash and memory-efficient kernels before it). None keeps the earlier choice, "default" goes
    back to torch's order.
    compile: `torch.compile` the UNet; the first call compiles (46 s for SD 1.5 on an H200, again
    for each new batch shape), so it pays off in long sweeps. (Inductor's coordinate-descent
    tuning, which diffusers' guide also suggests, made compiling take over 3 minutes.)
    A mode name compiles with that `torch.compile` mode: "reduce-overhead" replays each UNet call
    as a CUDA graph (no per-kernel launch cost; on a CPU it is the default mode). For SD 1.5's
    sweep on an H200 it matched the default mode: its kernels, not their launches, set the pace.
    compile_vae: with compile, also compile the VAE's decoder (torch.compile's default mode: it
    runs once per image, so fusing its large group norms is what counts). None: on a GPU, where
    it made SD 1.5's decode of 8 images 3.5x faster on an H100 (65 ms against 225 ms, 25 s to
    compile); not on a CPU, where the decode is a small share and compiling it costs more.
    """
    import torch  # heavy: the CLI's parser imports this module without torch

    # 1. Check inputs
    mode = "default" if compile is True else compile or None
    if mode not in (None, *COMPILE_MODES):
        raise SdlabInputError(f"compile={compile!r} is not a torch.compile mode; give True or one of {COMPILE_MODES}")
    if attention is not None and attention not in ATTENTION_KERNELS:
        raise SdlabInputError(f"attention={attention!r} is not one of torch's attention kernels; give one of "
                              f"{tuple(ATTENTION_KERNELS)}")
    # 2. Memory layout and fused projections
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections(unet=True, vae=False)  # replaces the attention processors…
    # 3. Attention kernel (…so the choice is applied after fusing, and kept across calls)
    pipe.sdlab_attention = attention or getattr(pipe, "sdlab_attention", "default")
    if fuse_qkv or attention:
        _prefer_attention_kernel(pipe.unet, pipe.sdlab_attention)
    # 4. Compile
    if mode and getattr(pipe, "sdlab_compile_mode", None) != mode:
        pipe.unet = torch.compile(getattr(pipe.unet, "_orig_mod", pipe.unet), mode=mode)
        pipe.sdlab_compile_mode = mode
    on_gpu = pipe.device.type == "cuda"
    if mode and (compile_vae or (compile_vae is None and on_gpu)) and pipe.vae.decoder._compiled_call_impl is None:
        pipe.vae.decoder.compile()  # in place: the VAE's weights keep their names
    return pipe
