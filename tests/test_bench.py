"""`sdlab bench`, SD 1.5's architecture without a download, and the opt-in GPU speed-ups."""
import re

import numpy as np
import pytest
import torch

from sdlab.cli import main
from sdlab.errors import SdlabInputError
from sdlab.pipelines import load_pipeline, speed_up
from sdlab.sweeps import guidance_sweep
from sdlab.testing import build_sd15_random_pipeline


def test_bench_prints_each_way_side_by_side_and_the_ratios(capsys):
    assert main(["bench", "--quick", "--model", "tiny-random", "--flop-limit", "3.3e11"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model tiny-random · 64×64 · 2 steps · PNDMScheduler · cpu")
    rows = {line[:50].strip(): line[50:].split() for line in lines if re.search(r"\d+\.\d+\s+\d+$", line)}
    assert set(rows) == {"loop, one image per call, float32 (course's way)", "one batch of 8, float32",
                         "7 guidance values, one call each, float32", "guidance sweep, one batched loop, float32"}
    for seconds, per_image, per_second, tflops, peak in rows.values():
        assert float(seconds) > 0 and abs(float(per_image) * float(per_second) - 1) < 0.05 and int(peak) > 0
    assert re.fullmatch(r"best path reaches \d+\.\d% of the 0\.3 TFLOP/s limit", lines[-2])
    loop, batch = float(rows["loop, one image per call, float32 (course's way)"][0]), float(rows["one batch of 8, float32"][0])
    ratios = re.fullmatch(r"batch speedup: (\d+\.\d)x, guidance-sweep speedup: (\d+\.\d)x", lines[-1])
    assert abs(float(ratios[1]) - loop / batch) < 0.1 * loop / batch  # the ratio of the times above (rounded)


def test_sd15_random_has_stable_diffusion_1_5s_architecture():
    pipe = build_sd15_random_pipeline(device="meta")  # shapes only: no memory, no time
    count = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    assert count == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}  # SD 1.5's own
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 768
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 64  # 512×512 images


def test_speed_ups_keep_the_images(tiny_pipe):
    pipe = load_pipeline("tiny-random")
    before = guidance_sweep(pipe, "a red circle", [1, 7.5], seed=3).images
    with pytest.raises(SdlabInputError, match="not a torch.compile mode"):
        speed_up(pipe, compile="fastest")
    speed_up(pipe, channels_last=True, fuse_qkv=True, compile="reduce-overhead")  # CUDA graphs need a GPU
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert hasattr(pipe.unet, "_orig_mod") and pipe.sdlab_compile_mode == "reduce-overhead"  # compiled
    after = guidance_sweep(pipe, "a red circle", [1, 7.5], seed=3).images
    for a, b in zip(before, after):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 2
