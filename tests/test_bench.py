"""`sdlab bench`, SD 1.5's architecture without a download, and the opt-in GPU speed-ups."""
import re

import numpy as np
import pytest
import torch

from sdlab.bench import GUIDANCE_VALUES
from sdlab.bench.profiling import count_flops
from sdlab.cli import main
from sdlab.errors import SdlabInputError
from sdlab.pipelines import load_pipeline, speed_up
from sdlab.sweeps import guidance_sweep
from sdlab.testing import build_sd15_random_pipeline

# a batch of 7 images has the shape of the guidance sweep's 7 values: torch.compile compiles the UNet
# once for both (a second shape would cost a minute of this machine's CPU), and test_speed_ups_keep_the_images
# and the test of a failed cuDNN timing compile that shape too: the first of them builds inductor's kernels, the
# others find them in its cache (they share it, and an xdist group that runs them one after the other)
IMAGES = len(GUIDANCE_VALUES)
ROW = re.compile(r"(\S.*?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+)")


def _rows(lines: list[str]) -> dict[str, list[str]]:
    """The timed rows of a report: name → [s total, s/image, images/s, TFLOP/s, peak MB]."""
    return {m[1]: list(m.groups()[1:]) for m in map(ROW.fullmatch, lines) if m}


def test_bench_prints_each_way_side_by_side_and_the_ratios(capsys):
    assert main(["bench", "--quick", "--model", "tiny-random", "--flop-limit", "3.3e11"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model tiny-random · 64×64 · 2 steps · PNDMScheduler · cpu")
    assert re.fullmatch(r"work: \d+\.\d GFLOP per image \(text encoder, UNet × 2 steps with guidance, VAE decode\): "
                        r"convolution \d+%, attention \d+%, matmul \d+%", lines[1])
    rows = _rows(lines)
    assert set(rows) == {"loop, one image per call, float32 (course's way)", "one batch of 8, float32",
                         "7 guidance values, one call each, float32", "guidance sweep, one batched loop, float32"}
    for seconds, per_image, per_second, _tflops, peak in rows.values():
        assert float(seconds) > 0 and abs(float(per_image) * float(per_second) - 1) < 0.05 and int(peak) > 0
    assert re.fullmatch(r"best path reaches \d+\.\d% of the 0\.3 TFLOP/s limit", lines[-2])
    loop, batch = (float(rows["loop, one image per call, float32 (course's way)"][0]),
                   float(rows["one batch of 8, float32"][0]))
    ratios = re.fullmatch(r"batch speedup: (\d+\.\d)x, guidance-sweep speedup: (\d+\.\d)x", lines[-1])
    assert abs(float(ratios[1]) - loop / batch) < 0.1 * loop / batch  # the ratio of the times above (rounded)


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "images must be a whole number from 1 to 64 (one batch), got 0"),
    (["--images", "65"], "images must be a whole number from 1 to 64 (one batch), got 65"),
    (["--steps", "0"], "num_inference_steps must be a whole number from 1 to 500, got 0"),  # not the default
    (["--size", "0"], "height must be between 32 and 2048 pixels, got 0"),
    (["--flop-limit", "0"], "flop_limit must be the device's FLOP/s, above 0, got 0.0; e.g. 3.3e11")])
def test_bench_refuses_bad_input_before_timing_anything(capsys, args, message):
    assert main(["bench", "--model", "tiny-random", *args]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"sdlab bench: error: {message}") and not _rows(out.splitlines())


def test_sd15_random_has_stable_diffusion_1_5s_architecture():
    pipe = build_sd15_random_pipeline(device="meta")  # shapes only: no memory, no time
    count = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
             for name in ("unet", "text_encoder", "vae")}
    assert count == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}  # SD 1.5's own
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 768
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 64  # 512×512 images


@pytest.mark.xdist_group("inductor")
def test_speed_ups_keep_the_images(tiny_pipe):
    pipe = load_pipeline("tiny-random")
    before = guidance_sweep(pipe, "a red circle", GUIDANCE_VALUES, seed=3).images
    with pytest.raises(SdlabInputError, match="not a torch.compile mode"):
        speed_up(pipe, compile="fastest")
    speed_up(pipe, channels_last=True, fuse_qkv=True, compile="reduce-overhead")  # CUDA graphs need a GPU
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert hasattr(pipe.unet, "_orig_mod") and pipe.sdlab_compile_mode == "reduce-overhead"  # compiled
    assert pipe.vae.decoder._compiled_call_impl is None  # on a CPU only when asked for
    # another mode compiles the plain UNet anew (not the compiled one again); the images below come from
    # torch.compile's default mode, the one sdlab bench --fast uses on a CPU, whose tests then find inductor's
    # graphs in its cache
    speed_up(pipe, channels_last=False, compile=True, compile_vae=True)
    assert pipe.sdlab_compile_mode == "default" and not hasattr(pipe.unet._orig_mod, "_orig_mod")
    assert pipe.vae.decoder._compiled_call_impl is not None  # in place: the same weight names
    assert set(pipe.vae.state_dict()) == set(load_pipeline("tiny-random").vae.state_dict())
    after = guidance_sweep(pipe, "a red circle", GUIDANCE_VALUES, seed=3).images
    for a, b in zip(before, after, strict=True):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 2


@pytest.mark.xdist_group("inductor")
def test_bench_fast_times_attention_kernels_and_compiling_and_profiles_a_batch(capsys, monkeypatch):
    from sdlab.speed import PreferredKernelAttnProcessor

    plain_call = PreferredKernelAttnProcessor.__call__

    def efficient_fails(self, *args, **kwargs):  # as a kernel without a plan for a shape would
        if self.kernel == "efficient":
            raise RuntimeError("no valid execution plan for this shape")
        return plain_call(self, *args, **kwargs)

    monkeypatch.setattr(PreferredKernelAttnProcessor, "__call__", efficient_fails)
    assert main(["bench", "--model", "tiny-random", "--images", str(IMAGES), "--fast", "--attention", "math",
                 "efficient", "--tune-convolutions", "--compile-mode", "default", "--profile"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {"sweep + channels_last + fused QKV", f"batch of {IMAGES} + … + math attention",
            "sweep + … + cuDNN-timed convolutions", "sweep + … + compiled",
            f"batch of {IMAGES} + … + compiled"} <= set(_rows(lines))
    assert not torch.backends.cudnn.benchmark  # the process-wide setting is put back
    assert "  (efficient attention failed: RuntimeError: no valid execution plan for this shape)" in lines
    assert not any("efficient attention" in name for name in _rows(lines))  # the bench went on without it
    start = lines.index(next(line for line in lines if line.startswith(f"where one batch of {IMAGES} spends")))
    table = {line.split()[0]: line.split()[1:] for line in lines[start + 2:start + 7]}
    assert list(table) == ["convolution", "attention", "matmul", "norm", "other"]
    time_shares = [int(t.rstrip("%")) for _, t, _, _ in table.values()]
    work_shares = [int(w.rstrip("%")) for _, _, w, _ in table.values()]
    assert 97 <= sum(time_shares) <= 103 and 97 <= sum(work_shares) <= 103
    assert all(float(table[kind][0]) > 0 for kind in ("convolution", "attention", "matmul", "norm"))
    assert float(table["attention"][3]) > 0 and table["norm"][3] == "-"  # a rate where FLOPs are counted
    assert lines[start + 7] == "  the 6 ops that took longest:" and "aten::" in lines[start + 8]
    compiled = lines.index(next(line for line in lines
                                if line.startswith(f"where the compiled batch of {IMAGES} spends")))
    assert compiled > lines.index(next(line for line in lines if line.startswith(f"batch of {IMAGES} + … + compiled")))
    table = {line.split()[0]: line.split()[1:] for line in lines[compiled + 2:compiled + 7]}
    assert list(table) == ["convolution", "attention", "matmul", "norm", "other"] and \
        float(table["convolution"][0]) > 0


@pytest.mark.xdist_group("inductor")
def test_bench_goes_on_when_cudnn_timed_convolutions_fail(monkeypatch):
    import sdlab.bench

    plain_sweep = sdlab.bench.guidance_sweep

    def fails_when_timing(*args, **kwargs):  # as cuDNN out of memory for a workspace would
        if torch.backends.cudnn.benchmark:
            raise RuntimeError("CUDNN_STATUS_ALLOC_FAILED")
        return plain_sweep(*args, **kwargs)

    monkeypatch.setattr(sdlab.bench, "guidance_sweep", fails_when_timing)
    lines = list(sdlab.bench.run("tiny-random", images=IMAGES, fast=True, tune_convolutions=True))
    assert "  (cuDNN-timed convolutions failed: RuntimeError: CUDNN_STATUS_ALLOC_FAILED)" in lines
    assert "sweep + … + compiled" in _rows(lines) and not torch.backends.cudnn.benchmark  # set back, then compiled
    assert lines[-1].startswith("batch speedup: ")


def test_profiled_gpu_kernels_go_to_the_kind_of_their_op_or_else_of_their_name():
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from sdlab.bench.profiling import _kind_by_name, _time_by_kind

    # kernel names as cuDNN, cuBLAS, torch's attention kernels and Triton give them on an H100
    assert [_kind_by_name(name) for name in (
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_kernel__5x_cudnn",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, false, cutlass::half_t>>",
        "fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t>::Params)",
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_kernel__5x_cublas",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNN", "triton_tem_fused_mm_7", "aten::addmm", "aten::linear",
        "triton_red_fused_native_group_norm_silu_0", "aten::native_layer_norm",
        "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>",
        "Memcpy HtoD (Pageable -> Device)",
        "## Call CompiledFxGraph fba7owmhzb6k6ijwpavr7mm57dnqlld2puw74pdh7tmugi2w4azm ##")] == [
        "convolution", "attention", "attention", "attention", "matmul", "matmul", "matmul", "matmul", "matmul",
        "norm", "norm", None, None, None]

    def event(id, name, start, end, device=DeviceType.CPU, kernels=(), parent=None):
        e = FunctionEvent(id, name, thread=0, start_us=start, end_us=end, use_device="cuda", device_type=device)
        for kernel in kernels:
            e.append_kernel(*kernel)
        e.cpu_parent = parent
        return e

    norm_kernel = ("void at::native::RowwiseMomentsCUDAKernel<c10::Half, float>", 0, 30)  # nameless as a kind
    conv, flash = ("sm90_xmma_fprop_implicit_gemm_f16f16_kernel__5x_cudnn", 0, 100), ("flash_fwd_kernel", 0, 50)
    group_norm = event(1, "aten::group_norm", 0, 40)
    cpu = [group_norm, event(2, "cudaLaunchKernel", 1, 2, kernels=[norm_kernel], parent=group_norm),
           event(3, "cudaGraphLaunch", 50, 51, kernels=[conv, flash])]  # a CUDA graph's kernels: no op of a kind
    gpu = [event(10 + i, name, 100 * i, 100 * i + us, device=DeviceType.CUDA)
           for i, (name, _, us) in enumerate([norm_kernel, conv, flash,
                                              ("triton_red_fused_native_group_norm_0", 0, 20)])]
    spent, total = _time_by_kind(type("Profile", (), {"events": lambda self: cpu + gpu})(), on_gpu=True)
    assert {kind: round(s * 1e6) for kind, s in spent.items() if s} == \
        {"norm": 50, "convolution": 100, "attention": 50}
    assert round(total * 1e6) == 200  # the last kernel no op launched counts by its name


def test_flops_are_counted_by_kind_including_cpus_flash_attention():
    q = torch.randn(2, 4, 64, 40)  # batch, heads, tokens, head size
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    flops = count_flops(lambda: (torch.nn.functional.scaled_dot_product_attention(q, q, q),
                                 conv(torch.randn(1, 8, 10, 10))))
    assert flops["attention"] == 4 * 2 * 4 * 64 * 64 * 40  # QKᵀ and the weighted sum of V, 2 FLOPs a multiply-add
    assert flops["convolution"] == 2 * 16 * 10 * 10 * 8 * 3 * 3 and flops["matmul"] == 0


def _unet_attention_ops(pipe) -> set[str]:
    from torch.profiler import profile

    unet = pipe.unet
    x, text = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad(), profile() as prof:
        unet(x, torch.tensor([500]), encoder_hidden_states=text)
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}


def test_speed_up_chooses_the_attention_kernel_and_keeps_it_through_fusing():
    pipe = load_pipeline("tiny-random")
    before = guidance_sweep(pipe, "a red circle", [1, 7.5], seed=3).images
    assert _unet_attention_ops(pipe) == {"aten::_scaled_dot_product_flash_attention_for_cpu"}  # torch's choice
    with pytest.raises(SdlabInputError, match="not one of torch's attention kernels"):
        speed_up(pipe, attention="fastest")
    speed_up(pipe, channels_last=False, attention="math")
    assert _unet_attention_ops(pipe) == {"aten::_scaled_dot_product_attention_math"}
    speed_up(pipe, channels_last=False, fuse_qkv=True)  # fusing replaces the processors; the choice stays
    assert _unet_attention_ops(pipe) == {"aten::_scaled_dot_product_attention_math"}
    after = guidance_sweep(pipe, "a red circle", [1, 7.5], seed=3).images
    for a, b in zip(before, after, strict=True):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 2
    speed_up(pipe, channels_last=False, attention="default")
    assert _unet_attention_ops(pipe) == {"aten::_scaled_dot_product_flash_attention_for_cpu"}
    assert _unet_attention_ops(load_pipeline("tiny-random", attention="math")) == {
        "aten::_scaled_dot_product_attention_math"}  # the same choice when loading


def test_bench_serve_sends_requests_over_http_one_by_one_and_at_once_and_prints_the_speedup(capsys):
    assert main(["bench", "--serve", "--quick", "--model", "tiny-random"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model tiny-random · 64×64 · 4 steps · cpu float32 · 4 clients × 2 requests of one "
                               "image · max batch 8, window 15 ms")
    rows = {m[1]: [float(x) for x in m.groups()[1:]] for m in map(SERVE_ROW.fullmatch, lines) if m}
    assert set(rows) == {"8 requests one by one (each alone)", "4 clients × 2 requests at once"}
    for per_second, p50, p95, _per_call in rows.values():
        assert per_second > 0 and 0 < p50 <= p95
    assert rows["8 requests one by one (each alone)"][3] == 1.0  # one call each
    assert rows["4 clients × 2 requests at once"][3] > 1.0  # the requests that came together shared calls
    assert re.fullmatch(r"p95 latency at once: \d+\.\dx a lone request's \(p50: \d+\.\dx\)", lines[-2])
    speedup = re.fullmatch(r"serve speedup: (\d+\.\d)x", lines[-1])
    alone, together = rows["8 requests one by one (each alone)"][0], rows["4 clients × 2 requests at once"][0]
    assert abs(float(speedup[1]) - together / alone) <= 0.05 + 0.05 * together / alone  # the ratio of the rows


SERVE_ROW = re.compile(r"(\S.*?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)")
