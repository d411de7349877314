"""Training sdlab-tiny (`sdlab train-tiny`): real steps on the CPU at a small batch."""
import json

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from sdlab.cli import main
from sdlab.tiny.train import TrainConfig, Trainer, _Batches

from test_tiny_model import MODEL


def _log(folder):
    return [json.loads(line) for line in (folder / "train.log").read_text().splitlines()]


def test_unet_phase_on_the_shipped_vae_checkpoints_resumes_and_exports(tmp_path):
    out = tmp_path / "run"
    args = ["train-tiny", "--out", str(out), "--vae-from", str(MODEL), "--batch-size", "2", "--data-workers", "1"]
    main(args + ["--unet-steps", "2"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (state["vae_step"], state["unet_step"]) == (TrainConfig.vae_steps, 2)
    shipped = AutoencoderKL.from_pretrained(MODEL, subfolder="vae").state_dict()
    assert all(torch.equal(state["vae"][k], v) for k, v in shipped.items())  # the VAE was kept, not retrained
    assert [e["phase"] for e in _log(out)][0] == "vae_eval"  # the gate is measured before the UNet trains
    main(args + ["--unet-steps", "3", "--export", str(tmp_path / "model")])  # resumes: one more step
    assert torch.load(out / "checkpoint.pt", weights_only=False)["unet_step"] == 3
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_auto_steps_fit_the_schedule_to_the_time(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), batch_size=1, unet_steps=10**9, vae_from=str(MODEL))
    trainer = Trainer(config)
    trainer.run(minutes=0.25, fit_to_deadline=True)
    schedule = [e for e in _log(tmp_path) if e["phase"] == "schedule"]
    assert len(schedule) == 1 and schedule[0]["unet_steps"] < 10**9
    assert trainer.unet_step <= config.unet_steps  # stopped by the fitted count or the deadline


def test_batches_are_the_same_from_any_worker():
    config = TrainConfig(batch_size=3)
    a, b = _Batches(config, "unet")[7], _Batches(config, "unet")[7]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], _Batches(config, "unet")[8][0])
    assert _Batches(config, "vae")[7][2].shape == (3, 64, 64)  # object masks weight the VAE's loss


def test_bad_training_options_say_what_to_change(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-tiny", "--out", str(tmp_path), "--unet-steps", "lots"])
    assert "give a number of steps or 'auto'" in capsys.readouterr().err
    assert main(["train-tiny", "--out", str(tmp_path), "--unet-steps", "auto"]) != 0
    assert "--minutes" in capsys.readouterr().err
    assert main(["train-tiny", "--out", str(tmp_path / "run"), "--vae-from", str(tmp_path)]) != 0
    assert "has no vae/ folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="same TinyConfig"):
        Trainer(TrainConfig(out_dir=str(tmp_path), vae_from=str(MODEL),
                            model=TrainConfig().model.__class__(vae_channels=(8, 16, 32))))
