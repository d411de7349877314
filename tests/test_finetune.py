"""Fine-tuning on liked images: a background job with a status, a new model version that diffusers
loads (LoRA and full), the old model untouched, and clear messages instead of crashes."""
import json
import time

import numpy as np
import pytest

import sdlab
from sdlab.errors import SdlabInputError
from sdlab.feedback import FeedbackStore
from sdlab.finetune import (
    LORA_FILE,
    FinetuneConfig,
    finetune,
    list_versions,
    load_version,
    start_finetune,
    training_examples,
)
from sdlab.tiny.preference import ColourRater, open_colour_prompts, preference_demo
from sdlab.tiny.world import Scene

STEPS = dict(num_inference_steps=2, seed=5)


def pixels(pipe, prompt="a blue circle on a white background"):
    return np.asarray(sdlab.generate(pipe, prompt, **STEPS).images[0], dtype=np.int16)


@pytest.fixture
def liked_store(tmp_path, tiny_pipe):
    """A store holding three rendered blue shapes rated 5 and one red one rated 1."""
    store = FeedbackStore(tmp_path / "feedback")
    base = sdlab.generate(tiny_pipe, "x", **STEPS)[0]
    scenes = [Scene(shape, colour, "white", "center", "large")
              for shape, colour in [("circle", "blue"), ("square", "blue"), ("cross", "blue"), ("circle", "red")]]
    items = [type(base)(s.render(), base.params.replace(prompt=f"a {s.shape} on a white background"), 0.0)
             for s in scenes]
    ids = store.add_generations(items)
    for image_id, item in zip(ids, items, strict=True):
        store.add_feedback(image_id, *ColourRater("blue")(item.image))
    yield store
    store.close()


def test_simulated_rater_reads_the_colour_from_pixels():
    rater = ColourRater("blue")
    assert rater(Scene("square", "blue", "white", "left", "large").render())[0] == 5
    rating, comment = rater(Scene("square", "red", "white", "left", "large").render())
    assert rating == 1 and comment == "red; I wanted blue"
    rated, held_out = open_colour_prompts("blue"), open_colour_prompts("blue", held_out=True)
    assert "a large circle on a red background" in rated and "a large cross on an orange background" in held_out
    assert not set(rated) & set(held_out)
    assert not any("blue" in p for p in rated + held_out)


def test_zero_liked_images_is_a_clear_message_not_a_crash(tmp_path, tiny_pipe):
    empty = FeedbackStore(tmp_path / "empty")
    with pytest.raises(SdlabInputError, match="nothing to fine-tune on: the store has no images with a mean rating"):
        start_finetune(tiny_pipe, empty, models_dir=tmp_path / "models")
    with pytest.raises(SdlabInputError, match="Rate some images 4 or 5 first"):
        finetune(tiny_pipe, [], models_dir=tmp_path / "models")
    with pytest.raises(SdlabInputError, match="method must be 'lora' or 'full'"):
        start_finetune(tiny_pipe, empty, FinetuneConfig(method="dreambooth"), models_dir=tmp_path / "models")
    for rate in (-1e-3, 0, 5):  # below 0 would climb the loss; 0 would not move
        with pytest.raises(SdlabInputError, match=f"learning_rate must be above 0 and at most 1, got {rate}"):
            start_finetune(tiny_pipe, empty, FinetuneConfig(learning_rate=rate), models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_lora_job_reports_status_and_saves_a_version_diffusers_loads(tmp_path, tiny_pipe, liked_store):
    before = pixels(tiny_pipe)
    job = start_finetune(tiny_pipe, liked_store, FinetuneConfig(steps=6, batch_size=2, learning_rate=1e-2),
                         models_dir=tmp_path / "models")
    seen = set()
    while job.running:
        seen.add(job.status().state)
        time.sleep(0.01)
    version = job.wait()
    status = job.status()
    assert seen <= {"queued", "running"} and status.state == "done" and status.step == 6 == status.total_steps
    assert status.loss > 0 and status.model == "tiny-random-feedback-v1" and status.version == str(version.folder)
    assert json.loads(json.dumps(status.to_dict()))["state"] == "done"  # JSON-ready for the app
    assert (version.name, version.number) == ("tiny-random-feedback", 1)
    assert version.info["examples"] == 3 and version.info["base_model"] == "tiny-random"  # the three liked ones
    assert (version.folder / LORA_FILE).is_file() and (version.folder / "model_index.json").is_file()

    # the base pipeline is untouched; the LoRA file loads with diffusers and gives the saved pipeline's images
    assert np.array_equal(pixels(tiny_pipe), before)
    with_lora = sdlab.load_pipeline("tiny-random")
    with_lora.load_lora_weights(str(version.folder))
    tuned = load_version(version.folder)
    assert np.abs(pixels(with_lora) - before).mean() > 0.5
    assert np.abs(pixels(with_lora) - pixels(tuned)).max() <= 1

    # a second fine-tune is version 2; version 1 stays
    start_finetune(tiny_pipe, liked_store, FinetuneConfig(steps=1, batch_size=2),
                   models_dir=tmp_path / "models").wait()
    assert [v.number for v in list_versions(tmp_path / "models")] == [1, 2]
    assert (version.folder / LORA_FILE).is_file()


def test_full_finetune_from_an_exported_imagefolder(tmp_path, tiny_pipe, liked_store):
    folder = liked_store.export_imagefolder(tmp_path / "liked")
    assert [e.prompt for e in training_examples(folder)] == [e.prompt for e in training_examples(liked_store)]
    version = finetune(tiny_pipe, folder, FinetuneConfig(method="full", steps=2, batch_size=2),
                       models_dir=tmp_path / "models", name="full")
    assert version.label == "full-v1" and not (version.folder / LORA_FILE).exists()
    tuned = sdlab.load_pipeline(str(version.folder))  # a plain diffusers folder
    assert np.abs(pixels(tuned) - pixels(tiny_pipe)).mean() > 0


def test_a_failing_job_says_why_and_a_cancelled_one_stops(tmp_path, tiny_pipe, liked_store):
    job = start_finetune(tiny_pipe, liked_store, FinetuneConfig(steps=100_000, batch_size=1),
                         models_dir=tmp_path / "models")
    while job.status().step < 2:
        time.sleep(0.01)
    job.cancel()
    with pytest.raises(InterruptedError):
        job.wait(60)
    status = job.status()
    assert status.state == "failed" and "cancelled" in status.message and status.version is None
    assert list_versions(tmp_path / "models") == []

    liked_store.add_generation(sdlab.generate(tiny_pipe, "a circle", **STEPS | {"height": 32, "width": 32})[0])
    liked_store.add_feedback(5, 5)  # a 32×32 image among 64×64 ones is resized, not a crash
    version = finetune(tiny_pipe, liked_store, FinetuneConfig(steps=1, batch_size=4), models_dir=tmp_path / "models")
    assert version.info["examples"] == 4


def test_preference_demo_runs_end_to_end(tmp_path, tiny_pipe, liked_store):
    statuses = []
    result = preference_demo(tiny_pipe, store=liked_store, test_images=4, num_inference_steps=2,
                             config=FinetuneConfig(steps=2, batch_size=2), models_dir=tmp_path / "models",
                             on_status=statuses.append)
    assert result.liked == 3 and result.rated == 4 and 0 <= result.before.share <= 1 and 0 <= result.after.share <= 1
    assert sum(result.before.counts.values()) == 4 == len(result.after.images)
    assert result.version.number == 1 and result.finetune_seconds > 0 and result.steps == 2 and result.method == "lora"
    assert statuses and statuses[-1].state == "done"


@pytest.mark.parametrize("kwargs, message", [
    (dict(rating_images=0), "rating_images must be a whole number, 1 or more, got 0"),
    (dict(test_images=-2), "test_images must be a whole number, 1 or more, got -2"),
    (dict(control_images=-1), "control_images must be a whole number, 0 or more, got -1"),
    (dict(config=FinetuneConfig(steps=0)), "steps must be 1–100000, got 0")])
def test_preference_demo_checks_its_numbers_before_making_an_image(tiny_pipe, tmp_path, monkeypatch, kwargs, message):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SdlabInputError, match=message):
        preference_demo(tiny_pipe, **kwargs)
    assert list(tmp_path.iterdir()) == []  # no work folder, no store, no image


def test_the_training_step_is_the_tiny_models_own_recipe():
    """noise_scheduler_for + diffusion_loss give sdlab.tiny.train's noisy latents and v-target."""
    from types import SimpleNamespace

    import torch

    from sdlab.finetune import noise_scheduler_for
    from sdlab.tiny.model import build_scheduler

    scheduler = noise_scheduler_for(SimpleNamespace(scheduler=build_scheduler()))
    assert scheduler.config.prediction_type == "v_prediction"
    latents, t = torch.randn(4, 4, 16, 16), torch.tensor([0, 300, 700, 999])
    noise = torch.randn_like(latents)
    alphas = build_scheduler().alphas_cumprod
    a, s = alphas[t].sqrt()[:, None, None, None], (1 - alphas[t]).sqrt()[:, None, None, None]
    assert torch.allclose(scheduler.add_noise(latents, noise, t), a * latents + s * noise, atol=1e-5)
    assert torch.allclose(scheduler.get_velocity(latents, noise, t), a * noise - s * latents, atol=1e-5)


def test_a_models_dir_that_cannot_be_written_is_refused_before_training(tmp_path, tiny_pipe, liked_store):
    (tmp_path / "afile").write_text("not a folder")
    steps = []
    for run in (lambda: finetune(tiny_pipe, liked_store, FinetuneConfig(steps=2, batch_size=2),
                                 models_dir=tmp_path / "afile", on_step=lambda *a: steps.append(a)),
                lambda: start_finetune(tiny_pipe, liked_store, models_dir=tmp_path / "afile"),
                lambda: preference_demo(tiny_pipe, store=liked_store, models_dir=tmp_path / "afile")):
        with pytest.raises(SdlabInputError, match=f"models_dir {tmp_path / 'afile'} is a file, not a folder"):
            run()
    assert steps == []


def test_a_version_fine_tuned_again_is_the_next_version_of_its_name_and_loads_from_anywhere(
        tmp_path, tiny_pipe, liked_store, monkeypatch):
    config = FinetuneConfig(method="full", steps=1, batch_size=2)
    first = finetune(tiny_pipe, liked_store, config, models_dir=tmp_path / "models")
    (tmp_path / "models" / first.name / "v7").mkdir()
    (tmp_path / "models" / first.name / "v7" / "sdlab_version.json").write_text('{"name": "tiny-ra')  # damaged
    monkeypatch.chdir(tmp_path)
    again = finetune(sdlab.load_pipeline("models/tiny-random-feedback/v1"), liked_store, config, models_dir="models")
    assert (again.name, again.number) == (first.name, 8)  # its lineage, past the damaged record's folder
    assert again.info["base_model"] == str(first.folder.resolve())  # a whole path, not "models/…"
    with pytest.warns(UserWarning, match="v7/sdlab_version.json is not a readable version record"):
        assert [v.number for v in list_versions(tmp_path / "models")] == [1, 8]


def test_a_pipeline_carrying_lora_weights_is_refused(tmp_path, tiny_pipe, liked_store):
    version = finetune(tiny_pipe, liked_store, FinetuneConfig(steps=1, batch_size=2), models_dir=tmp_path / "models")
    with_lora = sdlab.load_pipeline("tiny-random")
    with_lora.load_lora_weights(str(version.folder))
    with pytest.raises(SdlabInputError, match="tiny-random carries LoRA weights: fine-tune the model they were made"):
        finetune(with_lora, liked_store, FinetuneConfig(steps=1), models_dir=tmp_path / "models")


def test_a_bfloat16_pipeline_fine_tunes_with_lora(tmp_path, liked_store):
    import torch

    pipe = sdlab.load_pipeline("tiny-random", dtype="bfloat16")
    version = finetune(pipe, liked_store, FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-2),
                       models_dir=tmp_path / "models")
    tuned = load_version(version.folder, dtype="bfloat16")
    assert tuned.unet.dtype == torch.bfloat16 and np.abs(pixels(tuned) - pixels(pipe)).mean() > 0


def test_bad_training_pairs_are_named(tmp_path, tiny_pipe, liked_store):
    from PIL import Image

    good = Image.new("RGB", (64, 64), "blue")
    for pairs, message in [
        ([("a blue circle", good)], "pair 0: expected .image, prompt. with a PIL image first, got str"),
        ([(good, None)], "pair 0: the prompt must be text, got None"),
        ([(good, "ok"), (Image.new("RGB", (1, 1)), "tiny")], "pair 1: the image is 1×1 pixels; fine-tuning needs "
                                                              "at least 8 a side"),
        ([(Image.new("I;16", (64, 64), 20000), "grey")], "pair 0: a I;16 image has more than 8 bits a channel"),
        ([good], "pair 0: expected .image, prompt."),
        ("a folder that is not there", "there is no folder a folder that is not there")]:
        with pytest.raises(SdlabInputError, match=message):
            training_examples(pairs)
    folder = liked_store.export_imagefolder(tmp_path / "liked")
    (folder / "metadata.jsonl").write_text((folder / "metadata.jsonl").read_text() + "{not json\n")
    with pytest.raises(SdlabInputError, match=r"metadata.jsonl line 4 is not a row like"):
        training_examples(folder)
    next(liked_store.liked()[0].path.parent.glob("*.png")).unlink()  # a stored image's file goes missing
    with pytest.raises(SdlabInputError, match=r"the store's image \d+: its image file cannot be read"):
        training_examples(liked_store)
    for config, message in [(FinetuneConfig(caption_dropout="0.1"), "caption_dropout and high_noise_share"),
                            (FinetuneConfig(seed=1.5), "seed must be a whole number ≥ 0, got 1.5"),
                            (FinetuneConfig(target_modules="to_q"), "target_modules must be a list of layer names")]:
        with pytest.raises(SdlabInputError, match=message):
            config.checked()
    with pytest.raises(SdlabInputError, match=r"no layer of this UNet is named like \['nope'\]"):
        finetune(tiny_pipe, [(good, "x")], FinetuneConfig(target_modules=("nope",)), models_dir=tmp_path / "m")
