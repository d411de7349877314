"""Making sdlab-tiny: training it and measuring it."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import SdlabInputError
from .command import Command


def _train_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    from ..tiny.config import COMPILE_BACKENDS, TinyConfig, TrainConfig  # keeps `import sdlab.cli` light

    parser.add_argument("--out", default="runs/sdlab-tiny")
    parser.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    parser.add_argument("--unet-steps", type=_steps_or_auto, default=TrainConfig.unet_steps,
                        help="UNet steps, or 'auto': as many as fit in --minutes, with a complete LR schedule")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--unet-lr", type=float, default=None, help=f"peak LR (default {TrainConfig.unet_lr})")
    parser.add_argument("--vae-lr", type=float, default=None, help=f"peak LR (default {TrainConfig.vae_lr})")
    parser.add_argument("--vae-from", default=None, help="keep the trained VAE of this model folder (skips phase 1)")
    parser.add_argument("--conv-in-kernel", type=int, default=TinyConfig.unet_conv_in_kernel,
                        help=f"size of the UNet's first convolution (default {TinyConfig.unet_conv_in_kernel}; "
                             f"v1 and v2 of sdlab-tiny: 3)")
    parser.add_argument("--init-from", default=None,
                        help="fine-tune this model folder: keep its VAE, train on its UNet and text encoder")
    parser.add_argument("--vae-finetune-steps", type=int, default=0,
                        help="with --init-from or --vae-from: first train that VAE this many steps on this world")
    parser.add_argument("--plain-world", action="store_true",
                        help="train on always-right captions and flat renders (v1-v3) instead of v4's web-like "
                             "captions and unnamed variation")
    parser.add_argument("--high-noise-share", type=float, default=TrainConfig.high_noise_share,
                        help=f"extra share of samples at high noise, where layout is decided "
                             f"(default {TrainConfig.high_noise_share})")
    parser.add_argument("--high-noise-from", type=float, default=TrainConfig.high_noise_from,
                        help=f"those samples' timesteps start at this fraction of the schedule "
                             f"(default {TrainConfig.high_noise_from}; the layout is set above 0.9)")
    parser.add_argument("--summary-dropout", type=float, default=TrainConfig.summary_dropout,
                        help="share of samples whose end and padding positions get the empty prompt's embeddings, "
                             "so the UNet must read the words (default 0)")
    parser.add_argument("--data-workers", type=int, default=None,
                        help="processes rendering batches ahead (default: 0 on a CPU, more beside a GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet and text encoder for training: fused kernels for a GPU, where "
                             "the tiny model's step is bound by kernel launches (compiling takes a minute or so)")
    parser.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default=TrainConfig.compile_backend,
                        help="with --compile: inductor generates fused kernels; aot_eager only traces the passes "
                             "(a quick check that a model compiles)")
    parser.add_argument("--eval-every", type=int, default=None, help="log held-out adherence every N UNet steps")
    parser.add_argument("--vae-eval-count", type=int, default=TrainConfig.vae_eval_count,
                        help="held-out renders the VAE is measured on before the UNet trains "
                             f"(default {TrainConfig.vae_eval_count})")
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    parser.add_argument("--export", default=None, help="save the EMA pipeline to this folder when done")


def _train_tiny(args) -> None:
    from ..tiny.config import TinyConfig  # keeps `sdlab --help` fast
    from ..tiny.train import TrainConfig, Trainer, export_pipeline  # keeps `sdlab --help` fast

    fit = args.unet_steps == "auto"
    if args.minutes is not None and not args.minutes > 0:
        raise SdlabInputError(f"--minutes must be above 0, got {args.minutes:g}")
    if fit and not args.minutes:
        raise SdlabInputError("--unet-steps auto fits the UNet's schedule to --minutes: give --minutes too")
    workers = args.data_workers if args.data_workers is not None else _default_data_workers()
    cfg = TrainConfig(out_dir=args.out, vae_steps=args.vae_steps, batch_size=args.batch_size,
                      unet_steps=10**9 if fit else args.unet_steps,  # auto: set once the speed is measured
                      mixed_precision=args.mixed_precision, data_workers=workers, vae_from=args.vae_from,
                      init_from=args.init_from, model=TinyConfig(unet_conv_in_kernel=args.conv_in_kernel),
                      high_noise_share=args.high_noise_share, high_noise_from=args.high_noise_from,
                      compile=args.compile, compile_backend=args.compile_backend,
                      vae_finetune_steps=args.vae_finetune_steps, summary_dropout=args.summary_dropout,
                      web_world=not args.plain_world, vae_eval_count=args.vae_eval_count)
    if args.unet_lr is not None:  # 0 too: the check says what is wrong with it
        cfg.unet_lr = args.unet_lr
    if args.vae_lr is not None:
        cfg.vae_lr = args.vae_lr
    if args.eval_every is not None:
        cfg.eval_every = args.eval_every
    trainer = Trainer(cfg)
    trainer.run(minutes=args.minutes, fit_to_deadline=fit)
    if args.export:
        print(export_pipeline(trainer.pipeline(), args.export))


def _default_data_workers() -> int:
    """Render training batches in worker processes where there are cores to spare (a GPU
    machine); on a small CPU machine the training itself needs the cores."""
    import torch  # keeps `sdlab --help` fast

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(12, cores - 2) if torch.cuda.is_available() and cores > 4 else 0


def _steps_or_auto(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of steps or 'auto', not {text!r}") from None


def _eval_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="sdlab-tiny")
    parser.add_argument("-n", type=int, default=None,
                        help="number of held-out prompts (default 200; 64 with --behaviour)")
    parser.add_argument("--behaviour", action="store_true",
                        help="the curves the course shows: adherence at guidance 0-20 (named and plain prompts), "
                             "over-guidance, how far two seeds are apart, and each step count's distance to 50 steps")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1, 3, 5, 7.5, 10, 15, 20])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--seed", type=int, default=0)


def _eval_tiny(args) -> None:
    from ..generation import check_guidance, check_steps  # keeps `sdlab --help` fast
    from ..pipelines import load_pipeline  # keeps `sdlab --help` fast
    from ..tiny.evaluate import measure_adherence  # keeps `sdlab --help` fast
    from ..tiny.world import held_out_scenes  # keeps `sdlab --help` fast

    count = args.n if args.n is not None else 64 if args.behaviour else 200
    scenes = held_out_scenes(count, seed=args.seed)  # a bad -n is refused before the model loads
    pipe = load_pipeline(args.model, progress=False)
    if args.behaviour:
        from ..tiny.evaluate import measure_behaviour  # keeps `sdlab --help` fast

        behaviour = measure_behaviour(pipe, scenes, seed=args.seed,
                                      progress=lambda text: print(f"... {text}", file=sys.stderr, flush=True))
        print("\n".join(behaviour.lines()))
        return
    for guidance in args.guidance:  # every value before the first evaluation
        check_guidance(guidance)
    for steps in args.steps:
        check_steps(steps)
    for guidance in args.guidance:
        for steps in args.steps:
            result = measure_adherence(pipe, scenes, guidance_scale=guidance, num_inference_steps=steps,
                                       scheduler=args.scheduler)
            print(f"guidance {guidance:4g} steps {steps:3d} | {result.line()}", flush=True)


COMMANDS = [
    Command("train-tiny", "train the sdlab-tiny model (resumes from --out)", _train_tiny_arguments, _train_tiny),
    Command("eval-tiny", "prompt adherence of the tiny model on held-out prompts", _eval_tiny_arguments, _eval_tiny),
]
