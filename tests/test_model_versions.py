"""Models a class makes are models the server offers: fine-tuning on one's own pictures (DreamBooth
style, `sdlab finetune --images DIR --prompt …`), and every version, LoRA-only ones too, loading by
its name with `load_pipeline`, `regenerate`, `sdlab serve --model` and AUTOMATIC1111's sd-models
and options. Fine-tunes take two steps; the server runs tiny-random, the command line sdlab-tiny."""
import json

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

import sdlab
import sdlab.app
from sdlab import cli
from sdlab.errors import SdlabInputError
from sdlab.finetune import LORA_FILE, FinetuneConfig, encode_examples, finetune, folder_examples, training
from sdlab.metadata import read_params, regenerate, save_png
from sdlab.presets import MODELS_VARIABLE, default_models_dir, find_version, models_dirs
from sdlab.seeds import default_size
from sdlab.tiny.world import Scene

PROMPT = "a photo of sks circle"
FAST = dict(num_inference_steps=2, seed=5)
TRAIN = FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-2)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def make_photos(folder):
    """Pictures of one subject as a person brings them: several formats and sizes, none the model's."""
    folder.mkdir()
    for n, (colour, size, suffix) in enumerate([("blue", (160, 96), ".png"), ("blue", (90, 120), ".jpg"),
                                                 ("purple", (128, 128), ".webp")]):
        Scene("circle", colour, "white", "center", "large").render().resize(size).save(folder / f"sks{n}{suffix}")
    (folder / "notes.md").write_text("not a picture: left alone")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos") / "sks")


@pytest.fixture(scope="module")
def models(tiny_pipe, photos, tmp_path_factory):
    """A models folder with a version saved whole ("circles-v1") and one saved as LoRA weights alone
    ("circles-lora-v1"), as SD 1.5's are, both fine-tuned on the photos."""
    folder = tmp_path_factory.mktemp("models")
    examples = folder_examples(photos, PROMPT)
    finetune(tiny_pipe, examples, TRAIN, models_dir=folder, name="circles")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "FULL_SAVE_MAX_PARAMETERS", 0)  # as for a model too big to save whole
        finetune(tiny_pipe, examples, TRAIN, models_dir=folder, name="circles-lora")
    return folder


@pytest.fixture
def in_models(models, monkeypatch):
    monkeypatch.setenv(MODELS_VARIABLE, str(models))
    return models


# ---- one's own pictures -------------------------------------------------------------------

def test_a_folder_of_pictures_is_captioned_by_its_txt_files_its_metadata_or_the_prompt(tmp_path, tiny_pipe):
    folder = make_photos(tmp_path / "dog")
    (folder / "sks1.txt").write_text("a photo of sks circle on a beach\n")
    examples = folder_examples(folder, PROMPT)
    assert [e.prompt for e in examples] == [PROMPT, "a photo of sks circle on a beach", PROMPT]
    assert [e.image.size for e in examples] == [(160, 96), (90, 120), (128, 128)]
    latents, text = encode_examples(tiny_pipe, examples)  # each centre-cropped and resized to the model's size
    assert latents.shape[-2:] == (default_size(tiny_pipe) // tiny_pipe.vae_scale_factor,) * 2 and len(text) == 3

    sideways = Image.new("RGB", (40, 20), "blue")  # a phone's photo: stored sideways, with a note to turn it
    exif = sideways.getexif()
    exif[0x0112] = 6
    sideways.save(folder / "sks3.jpg", exif=exif)
    assert folder_examples(folder, PROMPT)[-1].image.size == (20, 40)

    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "sks2.webp", "text": "a navy circle"}) + "\n"
                                           + json.dumps({"file_name": "sks0.png"}) + "\n")
    assert [e.prompt for e in folder_examples(folder, PROMPT)] == ["a navy circle", PROMPT]
    with pytest.raises(SdlabInputError, match=r"line 2 \(sks0.png\) has no \"text\""):
        folder_examples(folder)


@pytest.mark.parametrize("setup, prompt, words", [
    (lambda folder: None, PROMPT, "there is no folder"),
    (lambda folder: folder.mkdir(), PROMPT, "holds no images: put your .png, .jpg or .webp files directly in it"),
    (lambda folder: (folder.mkdir(), (folder / "a.png").write_text("not a picture")), PROMPT,
     "a.png: its image file cannot be read"),
    (lambda folder: (make_photos(folder), (folder / "sks1.txt").write_text("a caption")), None,
     r"2 of the 3 images in .* have no caption \(sks0.png, sks2.webp\): give one for all of them \(--prompt"),
    (make_photos, "  ", "prompt must be a caption such as 'a photo of sks dog', got '  '"),
])
def test_pictures_that_cannot_train_are_named(tmp_path, setup, prompt, words):
    setup(tmp_path / "pictures")
    with pytest.raises(SdlabInputError, match=words):
        folder_examples(tmp_path / "pictures", prompt)


# ---- versions by name ---------------------------------------------------------------------

def test_every_version_loads_by_its_label_or_its_name(tiny_pipe, in_models):
    whole, lora = find_version("circles-v1"), find_version("circles-lora-v1")
    assert (whole.folder / "model_index.json").is_file()
    assert (lora.folder / LORA_FILE).is_file() and not (lora.folder / "model_index.json").exists()
    assert lora.info["base_model"] == "tiny-random" and lora.info["examples"] == 3

    base = sdlab.generate(tiny_pipe, PROMPT, **FAST)[0]
    by_hand = sdlab.load_pipeline("tiny-random")  # what diffusers does with the LoRA weights
    by_hand.load_lora_weights(str(lora.folder))
    for label in ("circles-v1", "circles-lora-v1"):
        pipe = sdlab.load_pipeline(label)
        assert sdlab.pipelines.model_name(pipe) == label and pipe.sdlab_version.label == label
        made = sdlab.generate(pipe, PROMPT, **FAST)[0]
        assert made.params.model == label and np.abs(pixels(made.image) - pixels(base.image)).mean() > 0.5
    assert np.array_equal(pixels(sdlab.generate(pipe, PROMPT, **FAST)[0].image),
                          pixels(sdlab.generate(by_hand, PROMPT, **FAST)[0].image))
    assert sdlab.load_pipeline("circles-lora").sdlab_version == lora  # a name alone: its newest version
    assert sdlab.load_pipeline(str(lora.folder)).sdlab_version == lora  # its folder, as before


def test_regenerate_finds_a_version_by_the_name_its_png_records(in_models, tmp_path, monkeypatch, capsys):
    png = save_png(sdlab.generate(sdlab.load_pipeline("circles-lora-v1"), PROMPT, **FAST)[0], tmp_path / "made.png")
    assert read_params(png).model == "circles-lora-v1"
    assert np.array_equal(pixels(regenerate(png).image), pixels(Image.open(png)))
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "again.png")]) == 0
    assert "identical" in capsys.readouterr().out

    monkeypatch.delenv(MODELS_VARIABLE)  # elsewhere (./feedback/models holds no such version)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "again.png")]) == 2
    assert "'circles-lora-v1', which is not a preset, a fine-tuned version in the models folders (feedback/models; " \
           "$SDLAB_MODELS lists others)" in capsys.readouterr().err


def test_a_name_that_loads_nothing_lists_the_versions_there_are(in_models, tmp_path, monkeypatch):
    with pytest.raises(SdlabInputError, match=f"a fine-tuned version .in {in_models}: circles-v1, circles-lora-v1."):
        sdlab.load_pipeline("circles-v9")
    monkeypatch.setenv(MODELS_VARIABLE, str(tmp_path / "empty"))
    with pytest.raises(SdlabInputError, match="none in .*empty; `sdlab finetune` makes them there"):
        sdlab.load_pipeline("circles-v1")
    monkeypatch.delenv(MODELS_VARIABLE)
    assert models_dirs() == [default_models_dir()] == [default_models_dir("feedback")]
    assert str(default_models_dir()) == "feedback/models"


# ---- the command line ---------------------------------------------------------------------

def test_cli_finetunes_sdlab_tiny_on_your_pictures_and_the_version_is_served_by_name(photos, tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.chdir(tmp_path)  # the default models folder: ./feedback/models, where `sdlab serve` looks
    monkeypatch.delenv(MODELS_VARIABLE, raising=False)
    assert cli.main(["finetune", "--images", str(photos), "--prompt", PROMPT, "--name", "my-circle",
                     "--model", "sdlab-tiny", "--steps", "2", "--learning-rate", "1e-2"]) == 0
    out = capsys.readouterr().out
    assert "training on 3 images" in out and "done: step 2/2" in out
    assert "new model: feedback/models/my-circle/v1 (load it by name: sdlab serve --model my-circle-v1" in out
    info = json.loads((tmp_path / "feedback/models/my-circle/v1/sdlab_version.json").read_text())
    assert info["base_model"] == "sdlab-tiny" and info["examples"] == 3 and info["method"] == "lora"

    tuned = sdlab.load_pipeline("my-circle")
    made = sdlab.generate(tuned, PROMPT, **FAST)[0]
    before = sdlab.generate(sdlab.load_pipeline("sdlab-tiny"), PROMPT, **FAST)[0]
    assert made.params.model == "my-circle-v1" and np.abs(pixels(made.image) - pixels(before.image)).mean() > 0.5
    png = save_png(made, tmp_path / "made.png")
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "again.png")]) == 0
    assert "identical" in capsys.readouterr().out

    served = {}

    def ask_then_stop(server):
        served["health"] = httpx.get(server.url + "health").json()
        served["models"] = httpx.get(server.url + "models").json()
        server.close()

    monkeypatch.setattr(sdlab.app.Server, "wait", ask_then_stop)
    assert cli.main(["serve", "--model", "my-circle-v1", "--port", "0"]) == 0
    assert served["health"]["model"] == "my-circle-v1"
    listed = {m["name"]: m for m in served["models"]["models"]}
    assert listed["my-circle-v1"]["loaded"] and listed["my-circle-v1"]["base_model"] == "sdlab-tiny"

    # the second fine-tune of the name is its version 2; version 1 stays, and still loads by its label
    assert cli.main(["finetune", "--images", str(photos), "--prompt", PROMPT, "--name", "my-circle",
                     "--model", "tiny-random", "--steps", "1"]) == 0
    assert "new model: feedback/models/my-circle/v2" in capsys.readouterr().out
    assert find_version("my-circle").number == 2 and find_version("my-circle-v1").info["base_model"] == "sdlab-tiny"
    assert cli.main(["models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("my-circle-v1 ") and "fine-tuned from sdlab-tiny (lora, 3 images)" in line
               for line in listed), listed
    assert any(line.startswith("my-circle-v2 ") and "fine-tuned from tiny-random" in line for line in listed)


@pytest.mark.parametrize("arguments, words", [
    (["--images", "{photos}", "--store", "feedback"], "give --images (your own pictures) or --store"),
    (["--prompt", PROMPT], "--prompt captions the pictures of --images DIR"),
    (["--images", "{tmp}/nowhere", "--prompt", PROMPT], "there is no folder {tmp}/nowhere"),
    (["--images", "{photos}"], "3 of the 3 images in {photos} have no caption"),
    (["--images", "{photos}", "--prompt", PROMPT, "--name", "sdlab-tiny"], "name 'sdlab-tiny' is a preset's"),
    (["--images", "{photos}", "--prompt", PROMPT, "--name", "my-dog-v2"],
     "name 'my-dog-v2' reads as version 2 of 'my-dog': name it 'my-dog'"),
    (["--images", "{photos}", "--prompt", PROMPT, "--name", "../escape"], "name must be letters, digits"),
    (["--store", "{tmp}/nowhere"], "{tmp}/nowhere holds no feedback store"),
])
def test_cli_finetune_refuses_what_cannot_train_saying_what_to_change(photos, tmp_path, monkeypatch, capsys,
                                                                       arguments, words):
    monkeypatch.chdir(tmp_path)
    filled = [a.format(photos=photos, tmp=tmp_path) for a in arguments]
    assert cli.main(["finetune", "--model", "tiny-random", "--steps", "1", *filled]) == 2
    err = capsys.readouterr().err
    assert words.format(photos=photos, tmp=tmp_path) in err and "Traceback" not in err, err
    assert not (tmp_path / "feedback").exists()


# ---- the server ---------------------------------------------------------------------------

def test_the_server_lists_the_versions_and_switches_to_them_for_webuiapi(tiny_pipe, in_models, tmp_path):
    models = in_models  # where `regenerate` finds the server's versions by name
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path / "feedback", models_dir=models)
    with sdlab.app.Server(app, "127.0.0.1", 0).start() as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
        assert {"tiny-random", "sdlab-tiny", "circles-v1", "circles-lora-v1"} <= set(api.util_get_model_names())
        listed = {m["name"]: m for m in httpx.get(server.url + "models").json()["models"]}
        assert listed["circles-lora-v1"]["base_model"] == "tiny-random" and not listed["circles-lora-v1"]["loaded"]

        api.util_set_model("circles-lora-v1", find_closest=False)
        assert api.util_get_current_model() == "circles-lora-v1" == app.state.studio.model
        result = api.txt2img(prompt=PROMPT, seed=3, width=64, height=64)
        assert result.info["sd_model_name"] == "circles-lora-v1" == read_params(result.image).model
        assert httpx.get(server.url + "models").json()["loaded"] == "circles-lora-v1"
        other = httpx.post(server.url + "text2img", json={"prompt": PROMPT, "model": "circles-v1"})
        assert other.status_code == 422 and "'circles-v1' is not loaded on this server" in other.json()["detail"]
        api.util_set_model("circles-v1", find_closest=False)
        assert app.state.studio.model == "circles-v1"

    assert np.array_equal(pixels(regenerate(result.image).image), pixels(result.image))
