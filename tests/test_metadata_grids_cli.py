import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdlab.cli import main
from sdlab.errors import SdlabInputError
from sdlab.generation import GeneratedImage, generate
from sdlab.grids import enlarge, image_grid, labelled_grid, show_images
from sdlab.metadata import format_parameters, parse_parameters, read_params, regenerate, save_png


def test_png_parameters_round_trip_and_regenerate(tiny_pipe, tmp_path):
    result = generate(tiny_pipe, "a red circle, top left: big", negative_prompt="blurry, dark", seed=5,
                      num_images_per_prompt=3, num_inference_steps=3, guidance_scale=6.5, scheduler="DPM++ 2M")
    for item in result:
        path = save_png(item, tmp_path / f"{item.params.seed}.png")
        text = Image.open(path).info["parameters"]
        assert text.splitlines()[1] == "Negative prompt: blurry, dark"
        assert f"Steps: 3, Sampler: DPM++ 2M, CFG scale: 6.5, Seed: {item.params.seed}, Size: 64x64" in text
        assert read_params(path) == item.params
        again = regenerate(path, tiny_pipe)
        assert np.array_equal(np.asarray(again.image), np.asarray(item.image))


def test_floats_round_trip_exactly_and_stay_short(tiny_pipe, tmp_path):
    guidance = 7.112747213686085  # six digits would write 7.11275, another guidance
    item = generate(tiny_pipe, "a red circle", seed=2, num_inference_steps=2, guidance_scale=guidance,
                    variation_seed=9, variation_strength=1 / 3)[0]
    path = save_png(item, tmp_path / "exact.png")
    text = Image.open(path).info["parameters"]
    assert "CFG scale: 7.112747213686085," in text and "Variation seed strength: 0.3333333333333333" in text
    assert read_params(path) == item.params
    assert np.array_equal(np.asarray(regenerate(path, tiny_pipe).image), np.asarray(item.image))
    for value, written in [(7.5, "7.5"), (5.0, "5"), (0.1, "0.1"), (1e-7, "1e-07"), (5.0000004, "5.0000004")]:
        params = item.params.replace(guidance_scale=value, mode="img2img", strength=value)
        assert f"CFG scale: {written}," in format_parameters(params)
        assert f"Denoising strength: {written}" in format_parameters(params)
        assert parse_parameters(format_parameters(params)) == params


def test_reads_automatic1111_text():
    text = ("a cat\nNegative prompt: ugly\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 123, "
            "Size: 512x768, Model hash: abc, Model: v1-5-pruned")
    p = parse_parameters(text)
    assert (p.prompt, p.negative_prompt, p.num_inference_steps, p.scheduler) == ("a cat", "ugly", 30, "Euler a")
    assert (p.guidance_scale, p.seed, p.width, p.height, p.model) == (7.0, 123, 512, 768, "v1-5-pruned")
    assert parse_parameters(format_parameters(p)) == p


def test_save_png_where_it_cannot_write_says_so(tiny_pipe, tmp_path):
    item = generate(tiny_pipe, "a red circle", seed=1, num_inference_steps=1)[0]
    (tmp_path / "a file").write_text("")
    with pytest.raises(SdlabInputError, match="cannot write .*a file/x.png: .*a file is a file, not a folder"):
        save_png(item, tmp_path / "a file" / "x.png")


def test_png_without_parameters_is_explained(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(SdlabInputError, match="no 'parameters' text chunk"):
        read_params(tmp_path / "plain.png")


def test_grids():
    ims = [Image.new("RGB", (10, 10), c) for c in ("red", "green", "blue", "white", "black")]
    grid = image_grid(ims, rows=2, cols=3, gap=0)
    assert grid.size == (30, 20) and grid.getpixel((25, 5)) == (0, 0, 255)
    labelled = labelled_grid(ims[:4], row_labels=["seed 1", "seed 2"], col_labels=["g 1", "g 7.5"], cell=64)
    assert labelled.width > 128 and labelled.height > 128
    # the images are pasted unchanged (scaled) at the bottom right
    assert labelled.getpixel((labelled.width - 5, labelled.height - 5)) == (255, 255, 255)
    with pytest.raises(SdlabInputError, match="4 images for 3 row labels"):
        labelled_grid(ims[:4], row_labels=["a", "b", "c"], col_labels=["x", "y"])
    with pytest.raises(SdlabInputError, match="same size"):
        image_grid([Image.new("RGB", (10, 10)), Image.new("RGB", (12, 10))])
    with pytest.raises(SdlabInputError, match="image_grid takes images; item 1 is a str: give PIL images"):
        image_grid([Image.new("RGB", (10, 10)), "cat.png"])
    with pytest.raises(SdlabInputError, match="rows must be a whole number above 0 or None"):
        image_grid([Image.new("RGB", (10, 10))], rows=0)
    with pytest.raises(SdlabInputError, match="show_images needs at least one image"):
        show_images([])


def test_grids_take_what_generate_returns(tiny_pipe):
    result = generate(tiny_pipe, "a red circle", seed=1, num_images_per_prompt=2, num_inference_steps=1)
    assert np.array_equal(np.asarray(image_grid(result)), np.asarray(image_grid(result.images)))


def test_enlarge_keeps_pixels_sharp():
    image = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8))  # 2 × 1: red, blue
    big = enlarge(image, 4)
    assert big.size == (8, 4)
    assert np.array_equal(np.asarray(big), np.asarray(image).repeat(4, axis=0).repeat(4, axis=1))
    assert enlarge(image, 1) is image


def test_cli_generate_then_regenerate(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", "tiny-random", "--seed", "42", "--steps", "20",
                 "--guidance", "7.5", "--width", "64", "--height", "64", "--scheduler", "DPM++ 2M", "-n", "4",
                 "--out", str(out), "--quiet"]) == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["42.png", "43.png", "44.png", "45.png"]
    assert main(["regenerate", str(out / "44.png"), "--out", str(tmp_path / "again.png")]) == 0
    assert "identical" in capsys.readouterr().out


def test_cli_regenerate_says_how_far_a_different_image_is(tiny_pipe, tmp_path, capsys):
    item = generate(tiny_pipe, "a red circle", seed=42, num_inference_steps=1)[0]
    pixels = np.asarray(item.image).copy()
    pixels[0, 0, 1] = pixels[0, 0, 1] + 1 if pixels[0, 0, 1] < 255 else 254  # what float rounding does
    path = save_png(GeneratedImage(Image.fromarray(pixels), item.params, item.seconds), tmp_path / "off.png")
    with pytest.raises(SystemExit) as exit_:
        main(["regenerate", str(path), "--out", str(tmp_path / "again.png")])
    assert exit_.value.code == 1
    assert (f"DIFFERENT from {path}: 1 of 4096 pixels differ, by at most 1 level (float rounding: a batch of several "
            f"prompts or a guidance sweep rounds differently from one image") in capsys.readouterr().out


@pytest.mark.parametrize("command, message", [
    (["regenerate", "{tmp}/none.png", "--out", "{tmp}/a.png"], "there is no file {tmp}/none.png"),
    (["regenerate", "{tmp}/nodir/x.png", "--out", "{tmp}/a.png"],
     "there is no file {tmp}/nodir/x.png (nor a folder {tmp}/nodir)"),
    (["regenerate", "{tmp}/notes.png", "--out", "{tmp}/a.png"], "{tmp}/notes.png is not an image PIL can read"),
    (["faces", "{tmp}/notes.png", "--out", "{tmp}/a.png", "--restorer", "classical"],
     "{tmp}/notes.png is not an image"),
    (["faces", "{tmp}/notes.png", "--out", "{tmp}/notes.png/a.png", "--restorer", "classical"],
     "--out {tmp}/notes.png is a file, not a folder: choose another --out"),
    (["generate", "x", "--model", "tiny-random", "--quiet", "--out", "{tmp}/notes.png/out"],
     "cannot make the folder {tmp}/notes.png/out (Not a directory): choose another --out"),
    (["generate", "x", "--model", "tiny-random", "--quiet", "--out", "{tmp}/notes.png"],
     "--out {tmp}/notes.png is a file, not a folder: choose another --out"),
    (["course", "check", "--solutions", "{tmp}"], "{tmp}/ holds no course notebooks (NN_name.ipynb)"),
    (["serve", "--model", "not-loaded", "--port", "70000"], "port must be a whole number from 0 to 65535, got 70000"),
])
def test_files_and_ports_that_cannot_be_used_are_teaching_errors(tmp_path, capsys, command, message):
    (tmp_path / "notes.png").write_text("not an image")
    assert main([part.format(tmp=tmp_path) for part in command]) == 2
    assert capsys.readouterr().err.startswith(f"sdlab {command[0]}: error: {message.format(tmp=tmp_path)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png"]  # nothing written, no folder made


def test_cli_bad_arguments_exit_nonzero_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "sdlab", "generate", "x", "--model", "tiny-random",
                           "--width", "500"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "width must be a multiple of 8, got 500; try 496 or 504" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_small_images_and_strips_of_them_are_enlarged_for_the_screen_and_big_ones_are_not():
    from sdlab.grids import display_scale

    assert display_scale(Image.new("RGB", (64, 64))) == 4  # sdlab-tiny's image
    assert display_scale(Image.new("RGB", (196, 64))) == 4  # three of them in a row: 784 px wide
    assert display_scale(Image.new("RGB", (656, 160))) == 1  # a labelled grid that already fills the page
    assert display_scale(Image.new("RGB", (512, 512))) == 1  # Stable Diffusion's
