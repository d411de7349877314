"""Training sdlab-tiny (`sdlab train-tiny`): real steps on the CPU at a small batch."""
import json

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from test_tiny_model import MODEL

from sdlab.cli import main
from sdlab.errors import SdlabInputError
from sdlab.tiny.config import TinyConfig
from sdlab.tiny.model import build_unet, widen_conv_in
from sdlab.tiny.train import TrainConfig, Trainer, _Batches, _token_ids, without_summary
from sdlab.tokenizer import load_clip_tokenizer


def _log(folder):
    return [json.loads(line) for line in (folder / "train.log").read_text().splitlines()]


def test_unet_phase_on_the_shipped_vae_checkpoints_resumes_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-tiny", "--out", str(out), "--vae-from", str(MODEL), "--batch-size", "2", "--data-workers", "1",
            "--vae-eval-count", "16"]  # the gate on 16 held-out renders, not 256: seconds less
    main(args + ["--unet-steps", "2"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (state["vae_step"], state["unet_step"]) == (TrainConfig.vae_steps, 2)
    shipped = AutoencoderKL.from_pretrained(MODEL, subfolder="vae").state_dict()
    assert all(torch.equal(state["vae"][k], v) for k, v in shipped.items())  # the VAE was kept, not retrained
    assert [e["phase"] for e in _log(out)][0] == "vae_eval"  # the gate is measured before the UNet trains
    assert state["config"]["vae_eval_count"] == 16
    main(args + ["--unet-steps", "3", "--export", str(tmp_path / "model")])  # resumes: one more step
    assert torch.load(out / "checkpoint.pt", weights_only=False)["unet_step"] == 3
    assert main(args + ["--unet-steps", "4", "--conv-in-kernel", "3"]) != 0  # not this checkpoint's sizes
    assert "made with other model sizes" in capsys.readouterr().err
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_auto_steps_fit_the_schedule_to_the_time(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), batch_size=1, unet_steps=10**9, vae_from=str(MODEL), vae_eval_count=16)
    trainer = Trainer(config)
    trainer.run(minutes=0.1, fit_to_deadline=True)
    schedule = [e for e in _log(tmp_path) if e["phase"] == "schedule"]
    assert len(schedule) == 1 and schedule[0]["unet_steps"] < 10**9
    assert trainer.unet_step <= config.unet_steps  # stopped by the fitted count or the deadline


def test_batches_are_the_same_from_any_worker():
    config = TrainConfig(batch_size=3)
    a, b = _Batches(config, "unet")[7], _Batches(config, "unet")[7]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], _Batches(config, "unet")[8][0])
    assert a[1].shape == (3, 77)  # the captions, tokenized where the images are rendered
    assert _Batches(config, "vae")[7][1].shape == (3, 64, 64)  # object masks weight the VAE's loss


def test_bad_training_options_say_what_to_change(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-tiny", "--out", str(tmp_path), "--unet-steps", "lots"])
    assert "give a number of steps or 'auto'" in capsys.readouterr().err
    assert main(["train-tiny", "--out", str(tmp_path), "--unet-steps", "auto"]) != 0
    assert "--minutes" in capsys.readouterr().err
    assert main(["train-tiny", "--out", str(tmp_path), "--conv-in-kernel", "4"]) != 0
    assert "must be odd" in capsys.readouterr().err
    assert main(["train-tiny", "--out", str(tmp_path), "--high-noise-from", "1"]) != 0
    assert "high_noise_from in [0, 1)" in capsys.readouterr().err
    for option, value, message in (("--batch-size", "0", "batch_size must be a whole number, 1 or more, got 0"),
                                   ("--vae-steps", "-1", "vae_steps must be a whole number, 0 or more, got -1"),
                                   ("--vae-eval-count", "0",
                                    "vae_eval_count must be a whole number, 1 or more, got 0"),
                                   ("--minutes", "-5", "--minutes must be above 0, got -5")):
        assert main(["train-tiny", "--out", str(tmp_path / "refused"), option, value]) == 2
        assert capsys.readouterr().err.startswith(f"sdlab train-tiny: error: {message}")
    assert not (tmp_path / "refused").exists()  # refused before anything is made
    assert main(["train-tiny", "--out", str(tmp_path / "run"), "--vae-from", str(tmp_path)]) != 0
    assert f"--vae-from {tmp_path} has no whole vae/ (config.json and its weights)" in capsys.readouterr().err
    (tmp_path / "part" / "vae").mkdir(parents=True)
    (tmp_path / "part" / "vae" / "config.json").write_text("{}")  # a config without its weights
    assert main(["train-tiny", "--out", str(tmp_path / "run"), "--init-from", str(tmp_path / "part")]) == 2
    assert "--init-from" in capsys.readouterr().err and not (tmp_path / "run" / "checkpoint.pt").exists()
    for option, value, message in (("--unet-lr", "0", "unet_lr must be above 0 and at most 1, got 0.0"),
                                   ("--eval-every", "0", "eval_every must be a whole number, 1 or more, got 0")):
        assert main(["train-tiny", "--out", str(tmp_path / "run"), option, value]) == 2  # 0 is not the default
        assert message in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["train-tiny", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SdlabInputError, match="compile_backend must be one of inductor, aot_eager, got 'fast'"):
        TrainConfig(compile_backend="fast").checked()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SdlabInputError, match="checkpoint.pt cannot be read .*train into another --out"):
        Trainer(TrainConfig(out_dir=str(tmp_path / "damaged")))
    with pytest.raises(ValueError, match="same TinyConfig"):
        Trainer(TrainConfig(out_dir=str(tmp_path), vae_from=str(MODEL),
                            model=TrainConfig().model.__class__(vae_channels=(8, 16, 32))))


def test_widening_conv_in_keeps_the_old_kernel_in_the_centre():
    small = dict(unet_channels=(8, 16, 32), attention_heads=2, text_width=16)
    narrow = build_unet(TinyConfig(unet_conv_in_kernel=3, **small)).eval()
    wide = build_unet(TinyConfig(unet_conv_in_kernel=17, **small)).eval()
    wide.load_state_dict(widen_conv_in(narrow.state_dict(), 17))
    old, new = narrow.conv_in.weight, wide.conv_in.weight
    assert torch.equal(new[..., 7:10, 7:10], old)
    outer = new.clone()
    outer[..., 7:10, 7:10] = 0
    assert 0 < outer.abs().max() <= 1 / (4 * 17 * 17) ** 0.5  # small random taps, not zeros (see why)
    assert torch.equal(widen_conv_in(narrow.state_dict(), 17)["conv_in.weight"], new)  # the same every time
    assert torch.equal(widen_conv_in(narrow.state_dict(), 3)["conv_in.weight"], old)  # same size: unchanged
    with pytest.raises(ValueError, match="cannot widen"):
        widen_conv_in(narrow.state_dict(), 4)


def test_init_from_starts_every_model_from_the_folder_and_a_resume_keeps_its_own(tmp_path):
    shipped = StableDiffusionPipeline.from_pretrained(MODEL)
    kernel = shipped.unet.config.conv_in_kernel
    config = TrainConfig(out_dir=str(tmp_path), init_from=str(MODEL), batch_size=2, unet_steps=1,
                         vae_eval_count=16, model=TinyConfig(unet_conv_in_kernel=kernel))
    trainer = Trainer(config)
    for ours, theirs in ((trainer.unet, shipped.unet), (trainer.unet_ema.module, shipped.unet),
                         (trainer.text_encoder, shipped.text_encoder), (trainer.vae, shipped.vae)):
        assert all(torch.equal(a, b)
                   for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True))
    assert trainer.vae_step == config.vae_steps  # phase 1 is skipped: the VAE is trained
    trainer.run()
    resumed = Trainer(config)  # the checkpoint wins over the folder
    assert resumed.unet_step == 1
    assert not all(torch.equal(a, b) for a, b in zip(resumed.unet.state_dict().values(),
                                                        shipped.unet.state_dict().values(), strict=True))


def test_init_from_a_model_of_other_sizes_says_so(tmp_path):
    with pytest.raises(SdlabInputError, match="other sizes than this TinyConfig"):
        Trainer(TrainConfig(out_dir=str(tmp_path), init_from=str(MODEL), model=TinyConfig(text_width=32)))


def test_high_noise_samples_come_from_the_top_of_the_schedule(tmp_path):
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), high_noise_share=1.0, high_noise_from=0.9))
    t = trainer.sample_timesteps(2000, torch.Generator().manual_seed(0))
    assert t.min() >= 900 and t.max() == 999
    trainer.cfg.high_noise_share = 0.0
    assert trainer.sample_timesteps(2000, torch.Generator().manual_seed(0)).min() < 100  # all of it


def test_compiled_training_trains_the_plain_modules_and_resumes_without_compiling(tmp_path):
    from torch._dynamo.utils import counters

    small = TinyConfig(unet_channels=(8, 16, 32), attention_heads=2, text_width=16, text_layers=1, text_heads=2)
    # aot_eager traces the forward and backward passes as inductor does, without generating code (inductor's
    # kernels are checked by sdlab bench --fast's test); what is tested here is training through the wrappers
    config = TrainConfig(out_dir=str(tmp_path), batch_size=2, vae_steps=0, unet_steps=2, compile=True,
                         compile_backend="aot_eager", vae_eval_count=16, model=small)
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    graphs = counters["stats"]["unique_graphs"]
    trainer.run()
    assert counters["stats"]["unique_graphs"] > graphs  # the passes were compiled
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["unet"]
    assert saved.keys() == before.keys()  # plain names, no torch.compile wrapper in them
    assert any(not torch.equal(saved[k], v) for k, v in before.items())  # the compiled steps trained these weights
    config.compile, config.unet_steps = False, 3
    resumed = Trainer(config)
    resumed.run()
    assert resumed.unet_step == 3


def test_vae_finetune_trains_the_given_vae_on_this_world_first_and_resumes_with_its_own(tmp_path):
    shipped = AutoencoderKL.from_pretrained(MODEL, subfolder="vae").state_dict()
    kernel = StableDiffusionPipeline.from_pretrained(MODEL).unet.config.conv_in_kernel
    config = TrainConfig(out_dir=str(tmp_path), init_from=str(MODEL), vae_finetune_steps=2, batch_size=2,
                         unet_steps=1, vae_eval_count=16, model=TinyConfig(unet_conv_in_kernel=kernel))
    trainer = Trainer(config)
    assert (trainer.vae_step, config.vae_steps) == (0, 2)  # phase 1 is the fine-tune, from the folder's VAE
    trainer.run()
    assert (trainer.vae_step, trainer.unet_step) == (2, 1)
    tuned = trainer.acc.unwrap_model(trainer.vae).state_dict()
    assert not all(torch.equal(tuned[k], v) for k, v in shipped.items())
    log = _log(tmp_path)
    assert [e["phase"] for e in log].count("vae_eval") == 1 and "error" in log[0]  # measured on this world
    resumed = Trainer(config)  # the checkpoint's VAE, not the folder's again
    assert resumed.vae_step == 2
    assert all(torch.equal(resumed.acc.unwrap_model(resumed.vae).state_dict()[k], v) for k, v in tuned.items())


def test_v4_trains_on_web_captions_and_looks_and_the_plain_world_stays_available():
    web, plain = _Batches(TrainConfig(batch_size=16), "unet")[3], _Batches(TrainConfig(batch_size=16, web_world=False),
                                                                           "unet")[3]
    assert not torch.equal(web[0], plain[0]) and not torch.equal(web[1], plain[1])


def test_plain_world_option_reaches_the_trainer(tmp_path):
    main(["train-tiny", "--out", str(tmp_path), "--vae-from", str(MODEL), "--batch-size", "1", "--unet-steps", "1",
          "--plain-world", "--vae-eval-count", "16"])
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["config"]["web_world"] is False


def test_summary_dropout_gives_the_chosen_captions_the_empty_prompts_end_and_padding():
    tokenizer = load_clip_tokenizer()
    ids = _token_ids(tokenizer, ["a red circle", "a big blue square at the top"])
    empty_ids = _token_ids(tokenizer, [""])
    text, empty = torch.randn(2, 77, 8), torch.randn(1, 77, 8)
    out = without_summary(text, ids, empty, tokenizer.eos_token_id, torch.tensor([True, False]))
    words = 1 + len(tokenizer.tokenize("a red circle"))  # the start token and the words keep their own
    assert torch.equal(out[0, :words], text[0, :words]) and torch.equal(out[0, words:], empty[0, words:])
    assert torch.equal(out[1], text[1])  # not chosen: unchanged
    assert empty_ids[0, 1] == tokenizer.eos_token_id


def test_summary_dropout_option_reaches_the_trainer_and_is_checked(tmp_path, capsys):
    main(["train-tiny", "--out", str(tmp_path), "--vae-from", str(MODEL), "--batch-size", "2", "--unet-steps", "1",
          "--summary-dropout", "0.5", "--vae-eval-count", "16"])
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["config"]["summary_dropout"] == 0.5
    assert main(["train-tiny", "--out", str(tmp_path / "b"), "--summary-dropout", "2"]) != 0
    assert "summary_dropout must be in [0, 1]" in capsys.readouterr().err
