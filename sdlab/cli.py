"""The `sdlab` command (also `python -m sdlab`).

    sdlab generate "a red circle" --model sdlab-tiny --seed 42 -n 4 --out outputs/
    sdlab regenerate outputs/42.png --out again.png
    sdlab train-tiny --out runs/sdlab-tiny        sdlab eval-tiny
    sdlab course build | check                    sdlab models | schedulers
    sdlab grade submissions/ --out report/ --jobs 4
    sdlab serve --model sdlab-tiny --port 7860    sdlab faces photo.jpg --out fixed.png
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from .errors import SdlabInputError, writable_folder
from .presets import PRESETS, default_model
from .speed import ATTENTION_KERNELS, COMPILE_MODES


def _generate(args) -> None:
    from .generation import generate  # keeps `sdlab --help` fast
    from .metadata import save_png  # keeps `sdlab --help` fast
    from .pipelines import load_pipeline  # keeps `sdlab --help` fast

    out = writable_folder(args.out)  # before the work, so no image is made only to be lost
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet)
    result = generate(pipe, args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                      num_images_per_prompt=args.n, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      height=args.height, width=args.width, scheduler=args.scheduler)
    for item in result:
        path = save_png(item, out / f"{item.params.seed}.png")
        print(path)
    print(f"{len(result)} image(s) in {result.seconds:.2f} s", file=sys.stderr)


def _regenerate(args) -> None:
    from .metadata import open_image, regenerate, save_png  # keeps `sdlab --help` fast

    pipe = None
    if args.use_model is not None:  # not `model`: main() fills that with the default model
        from .pipelines import load_pipeline  # keeps `sdlab --help` fast

        pipe = load_pipeline(args.use_model)
    item = regenerate(args.png, pipe, force=args.force, trust_model=args.trust_model)
    save_png(item, args.out)
    difference = _pixel_difference(open_image(args.png), item.image)
    if difference is None:
        print(f"{args.out} (identical to {args.png})")
        return
    print(f"{args.out} (DIFFERENT from {args.png}: {difference})")
    raise SystemExit(1)


def _pixel_difference(before, after) -> str | None:
    """None for identical pixels, else how far apart they are (and why a level or two can be)."""
    import numpy as np  # keeps `sdlab --help` fast

    a, b = np.asarray(before.convert("RGB")).astype(int), np.asarray(after.convert("RGB")).astype(int)
    if a.shape != b.shape:
        return f"{before.width}×{before.height} against {after.width}×{after.height} pixels"
    diff = np.abs(a - b).max(axis=-1)
    if not diff.any():
        return None
    most = int(diff.max())
    text = f"{int((diff > 0).sum())} of {diff.size} pixels differ, by at most {most} level{'s' if most > 1 else ''}"
    return text + (" (float rounding: a batch of several prompts or a guidance sweep rounds differently from "
                   "one image, and so can another device or torch version)" if most <= 2 else "")


def _train_tiny(args) -> None:
    from .tiny.config import TinyConfig  # keeps `sdlab --help` fast
    from .tiny.train import TrainConfig, Trainer, export_pipeline  # keeps `sdlab --help` fast

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
                      web_world=not args.plain_world)
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


def _eval_tiny(args) -> None:
    from .generation import check_guidance, check_steps  # keeps `sdlab --help` fast
    from .pipelines import load_pipeline  # keeps `sdlab --help` fast
    from .tiny.evaluate import measure_adherence  # keeps `sdlab --help` fast
    from .tiny.world import held_out_scenes  # keeps `sdlab --help` fast

    count = args.n if args.n is not None else 64 if args.behaviour else 200
    scenes = held_out_scenes(count, seed=args.seed)  # a bad -n is refused before the model loads
    pipe = load_pipeline(args.model, progress=False)
    if args.behaviour:
        from .tiny.evaluate import measure_behaviour  # keeps `sdlab --help` fast

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


def _course(args) -> None:
    from .grading import course  # keeps `sdlab --help` fast

    if args.action == "build":
        for path in course.build(args.solutions, args.notebooks, repo=args.repo):
            print(path)
    elif args.repo is not None:
        raise SdlabInputError("--repo goes with `sdlab course build`; `check` checks against the repository that "
                              "build remembered in pyproject.toml")
    else:
        problems = course.check(args.solutions, args.notebooks)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print("notebooks/ is in sync with solutions/")


def _serve(args) -> None:
    from .app import serve  # keeps `sdlab --help` fast
    from .app.feedback import FinetuneLimits  # keeps `sdlab --help` fast

    limits = FinetuneLimits(args.max_finetune_steps, args.max_finetune_minutes, args.keep_versions)
    serve(args.model, host=args.host, port=args.port, share=args.share, max_queue=args.max_queue,
          max_work=args.max_work, max_side=args.max_side, finetune_limits=limits, token=args.operator_token,
          max_batch=args.max_batch, batch_window=args.batch_window_ms / 1000)


def _feedback_demo(args) -> None:
    from .finetune import FinetuneConfig  # keeps `sdlab --help` fast
    from .pipelines import load_pipeline  # keeps `sdlab --help` fast
    from .tiny.preference import preference_demo  # keeps `sdlab --help` fast

    pipe = load_pipeline(args.model, progress=False)
    result = preference_demo(pipe, colour=args.colour, rating_images=args.images, test_images=args.test_images,
                             control_images=args.control_images, num_inference_steps=args.num_inference_steps,
                             config=FinetuneConfig(steps=args.finetune_steps, learning_rate=2e-3), seed=args.seed,
                             models_dir=args.models_dir, on_status=lambda status: print(
                                 status.line(), end="\r" if sys.stdout.isatty() else "\n", flush=True))
    print(f"\n{result['liked']} of {result['rated']} images liked; {args.colour} objects on held-out prompts: "
          f"{result['before']:.0%} → {result['after']:.0%}")
    if result["named_colour_before"] is not None:
        print(f"prompts that name a colour, right colour: {result['named_colour_before']:.0%} → "
              f"{result['named_colour_after']:.0%}")
    print(f"fine-tuned in {result['finetune_seconds']:.0f} s; the new model: {result['version'].folder}")


def _finetune(args) -> None:
    from .feedback import FeedbackStore  # keeps `sdlab --help` fast
    from .finetune import Example, FinetuneConfig, folder_examples, how_to_load, start_finetune  # `sdlab --help`
    from .finetune.training import default_name  # keeps `sdlab --help` fast
    from .pipelines import load_pipeline, model_name  # keeps `sdlab --help` fast
    from .presets import default_models_dir  # keeps `sdlab --help` fast

    if args.images is not None and args.store is not None:
        raise SdlabInputError("give --images (your own pictures) or --store (a feedback store's liked images), "
                              "not both")
    if args.prompt is not None and args.images is None:
        raise SdlabInputError("--prompt captions the pictures of --images DIR; a store's images keep their prompts")
    store = args.store or "feedback"
    if args.images is None and not (Path(store) / "feedback.sqlite3").is_file():
        raise SdlabInputError(f"{store} holds no feedback store; give the folder that `sdlab serve` kept "
                              f"(./feedback where it ran) with --store, or your own pictures with --images DIR")
    config = FinetuneConfig(method=args.method, steps=args.steps, min_rating=args.min_rating,
                            learning_rate=args.learning_rate).checked()
    if args.images is not None:
        examples = folder_examples(args.images, args.prompt)  # the pictures' errors before the model loads
        pipe = load_pipeline(args.model, progress=False)
        models_dir, name = args.models_dir or default_models_dir(), args.name or default_name(pipe, "ft")
    else:
        pipe = load_pipeline(args.model, progress=False)
        liked = FeedbackStore(store).liked(config.min_rating, model=model_name(pipe))  # the model's own images
        if not liked:
            raise SdlabInputError(f"no image in {store} made with {model_name(pipe)} has a mean rating of "
                                  f"{config.min_rating:g} or more; rate some in the app, lower --min-rating, or name "
                                  f"the model that made them with --model")
        examples = [Example(item.image, item.prompt, item.id) for item in liked]
        models_dir, name = args.models_dir or default_models_dir(store), args.name
    job = start_finetune(pipe, examples, config, models_dir=models_dir, name=name)
    while job.running:
        print(job.status().line(), flush=True)
        time.sleep(2)
    print(job.status().line())
    version = job.wait()
    print(f"new model: {version.folder} ({how_to_load(version)})")


def _faces(args) -> None:
    from PIL import Image, ImageOps  # keeps `sdlab --help` fast

    from .faces import download_weights, restore_faces  # keeps `sdlab --help` fast
    from .metadata import open_image  # keeps `sdlab --help` fast

    if args.download:
        print(download_weights(args.restorer, args.weights_dir))
        return
    if not args.image or not args.out:
        raise SdlabInputError("give an IMAGE and --out FILE (or --download to fetch the weights)")
    out = Path(args.out)
    kind = Image.registered_extensions().get(out.suffix.lower())
    if out.is_dir() or kind is None or kind not in Image.SAVE:
        raise SdlabInputError(f"--out {out} is not a picture file name: end it with .png, .jpg or .webp")
    writable_folder(out.parent)  # before the work
    # a phone's photo is stored sideways with a note to turn it: turned first, as viewers show it
    result = restore_faces(ImageOps.exif_transpose(open_image(args.image)), args.restorer, upscale=args.upscale,
                           weight=args.weight, weights_dir=args.weights_dir, device=args.device, backend=args.backend)
    image, note = result.image, ""
    if kind == "JPEG" and image.mode not in ("RGB", "L"):
        image, note = image.convert("RGB"), " (JPEG keeps no transparency: save a .png to keep it)"
    image.save(out)
    print(f"{out}: {result.summary()}{note}")


def _grade(args) -> None:
    from .grading import Limits, Sandbox, grade  # keeps `sdlab --help` fast

    parameters = {"model": args.model, **{name: _literal(value) for name, value in args.parameter}}
    if args.memory <= 0:
        raise SdlabInputError(f"--memory must be a positive number of GiB, got {args.memory}")
    limits = Limits(memory=round(args.memory * 2**30), processes=args.processes)
    report = grade(args.submissions, args.against, args.out, timeout=args.timeout, jobs=args.jobs,
                   parameters=parameters, sandbox=Sandbox(args.sandbox, limits))
    print(report.line())


def _literal(text: str):
    """'3' → 3, '0.5' → 0.5, 'None' → None; anything else stays a string (like papermill -p)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _bench(args) -> None:
    if args.serve:
        from .bench.serve import run_serve  # keeps `sdlab --help` fast

        options = (dict(clients=4, requests=2, steps=4, rounds=1) if args.quick
                   else dict(clients=args.clients, requests=args.requests, steps=None, rounds=2))
        if args.steps is not None:
            options["steps"] = args.steps
        for line in run_serve(args.model, max_batch=args.max_batch, batch_window=args.batch_window_ms / 1000,
                              device=args.device, dtype=args.dtype, **options):
            print(line, flush=True)
        return
    from .bench import run  # keeps `sdlab --help` fast

    images = 8 if args.quick else args.images
    for line in run(args.model, images=images, steps=args.steps, device=args.device, dtype=args.dtype,
                    flop_limit=args.flop_limit, fast=args.fast, size=args.size, attention=args.attention,
                    tune_convolutions=args.tune_convolutions, compile_mode=args.compile_mode,
                    profile_batch=args.profile):
        print(line, flush=True)


def _list(args) -> None:
    if args.command == "models":
        for p in PRESETS.values():
            print(f"{p.name:12} {p.source:45} {p.description}")
    else:
        from .schedulers import ALIASES, scheduler_names, schedulers_for  # keeps `sdlab --help` fast

        names = scheduler_names()
        if not args.all:
            from .pipelines import load_pipeline  # keeps `sdlab --help` fast

            names = schedulers_for(load_pipeline(args.model, progress=False).scheduler.config)
            left = [name for name in scheduler_names() if name not in names]
            if left:
                print(f"not offered for {args.model} (they cannot run its noise schedule at every step count from 1 "
                      f"to 50): {', '.join(left)}", file=sys.stderr)
        for name in names:
            print(name, *(f"({a})" for a, n in ALIASES.items() if n == name and a.startswith("K_")))


def build_parser() -> argparse.ArgumentParser:
    from .tiny.config import COMPILE_BACKENDS, TinyConfig, TrainConfig  # keeps `import sdlab.cli` light (numpy, PIL)

    parser = argparse.ArgumentParser(prog="sdlab", description="Stable Diffusion course kit")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images and save them as PNGs with their parameters")
    gen.add_argument("prompt")
    gen.add_argument("--model", default=None, help="preset, folder or hub id (default: sdlab-tiny)")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--scheduler", default=None)
    gen.add_argument("-n", type=int, default=1, help="number of images")
    gen.add_argument("--device", default="auto")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--out", default="outputs")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    regen = sub.add_parser("regenerate", help="make an image again from its PNG metadata")
    regen.add_argument("png")
    regen.add_argument("--out", required=True)
    regen.add_argument("--model", dest="use_model", default=None,
                       help="the model to use (default: the one the PNG names, if it is a preset or inside a models "
                            "folder)")
    regen.add_argument("--trust-model", action="store_true", help="load the model the PNG names from wherever it is")
    regen.add_argument("--force", action="store_true", help="run a job above the work limit (1600 image-steps)")
    regen.set_defaults(func=_regenerate)

    train = sub.add_parser("train-tiny", help="train the sdlab-tiny model (resumes from --out)")
    train.add_argument("--out", default="runs/sdlab-tiny")
    train.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    train.add_argument("--unet-steps", type=_steps_or_auto, default=TrainConfig.unet_steps,
                       help="UNet steps, or 'auto': as many as fit in --minutes, with a complete LR schedule")
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    train.add_argument("--unet-lr", type=float, default=None, help=f"peak LR (default {TrainConfig.unet_lr})")
    train.add_argument("--vae-lr", type=float, default=None, help=f"peak LR (default {TrainConfig.vae_lr})")
    train.add_argument("--vae-from", default=None, help="keep the trained VAE of this model folder (skips phase 1)")
    train.add_argument("--conv-in-kernel", type=int, default=TinyConfig.unet_conv_in_kernel,
                       help=f"size of the UNet's first convolution (default {TinyConfig.unet_conv_in_kernel}; "
                            f"v1 and v2 of sdlab-tiny: 3)")
    train.add_argument("--init-from", default=None,
                       help="fine-tune this model folder: keep its VAE, train on its UNet and text encoder")
    train.add_argument("--vae-finetune-steps", type=int, default=0,
                       help="with --init-from or --vae-from: first train that VAE this many steps on this world")
    train.add_argument("--plain-world", action="store_true",
                       help="train on always-right captions and flat renders (v1-v3) instead of v4's web-like "
                            "captions and unnamed variation")
    train.add_argument("--high-noise-share", type=float, default=TrainConfig.high_noise_share,
                       help=f"extra share of samples at high noise, where layout is decided "
                            f"(default {TrainConfig.high_noise_share})")
    train.add_argument("--high-noise-from", type=float, default=TrainConfig.high_noise_from,
                       help=f"those samples' timesteps start at this fraction of the schedule "
                            f"(default {TrainConfig.high_noise_from}; the layout is set above 0.9)")
    train.add_argument("--summary-dropout", type=float, default=TrainConfig.summary_dropout,
                       help="share of samples whose end and padding positions get the empty prompt's embeddings, "
                            "so the UNet must read the words (default 0)")
    train.add_argument("--data-workers", type=int, default=None,
                       help="processes rendering batches ahead (default: 0 on a CPU, more beside a GPU)")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet and text encoder for training: fused kernels for a GPU, where "
                            "the tiny model's step is bound by kernel launches (compiling takes a minute or so)")
    train.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default=TrainConfig.compile_backend,
                       help="with --compile: inductor generates fused kernels; aot_eager only traces the passes "
                            "(a quick check that a model compiles)")
    train.add_argument("--eval-every", type=int, default=None, help="log held-out adherence every N UNet steps")
    train.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    train.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    train.add_argument("--export", default=None, help="save the EMA pipeline to this folder when done")
    train.set_defaults(func=_train_tiny)

    ev = sub.add_parser("eval-tiny", help="prompt adherence of the tiny model on held-out prompts")
    ev.add_argument("--model", default="sdlab-tiny")
    ev.add_argument("-n", type=int, default=None, help="number of held-out prompts (default 200; 64 with --behaviour)")
    ev.add_argument("--behaviour", action="store_true",
                    help="the curves the course shows: adherence at guidance 0-20 (named and plain prompts), "
                         "over-guidance, how far two seeds are apart, and each step count's distance to 50 steps")
    ev.add_argument("--guidance", type=float, nargs="+", default=[1, 3, 5, 7.5, 10, 15, 20])
    ev.add_argument("--steps", type=int, nargs="+", default=[20])
    ev.add_argument("--scheduler", default=None)
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval_tiny)

    course = sub.add_parser("course", help="build blank notebooks (and nbgrader's metadata) from solutions, or check "
                                          "they are in sync")
    course.add_argument("action", choices=["build", "check"])
    course.add_argument("--solutions", default="solutions")
    course.add_argument("--notebooks", default="notebooks")
    course.add_argument("--repo", metavar="OWNER/NAME[@BRANCH]",
                        help="build: point every notebook's Colab badge and install cell at this GitHub repository "
                             "(branch main unless given), and remember it in pyproject.toml for later builds")
    course.set_defaults(func=_course)

    srv = sub.add_parser("serve", help="the web app: Gradio UI and REST API in one server")
    srv.add_argument("--model", default=None, help="preset, folder or hub id (default: sdlab-tiny)")
    srv.add_argument("--host", default="127.0.0.1", help="127.0.0.1 keeps it on this machine")
    srv.add_argument("--port", type=int, default=7860)
    srv.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    srv.add_argument("--max-queue", type=int, default=16, help="requests in line at most (the running one "
                     "included); more get 503 with Retry-After")
    srv.add_argument("--max-work", type=float, default=1600, help="the most one request may ask for, in "
                     "image-steps at the model's own size (default 1600: 64 images at 25 steps)")
    srv.add_argument("--max-side", type=int, default=None, help="the largest width or height served (default: 8 "
                     "times the model's own size, e.g. 512 for sdlab-tiny)")
    srv.add_argument("--max-batch", type=int, default=8, help="images in one pipeline call at most: requests that "
                     "arrive together share a call (default 8; 1: one image per call)")
    srv.add_argument("--batch-window-ms", type=float, default=15, help="how long the first request waits for others "
                     "to share its call (default 15 ms)")
    srv.add_argument("--max-finetune-steps", type=int, default=1000, help="steps one fine-tune may ask for")
    srv.add_argument("--max-finetune-minutes", type=float, default=30, help="a fine-tune stops after this long")
    srv.add_argument("--keep-versions", type=int, default=5, help="fine-tuned versions kept (the oldest go)")
    srv.add_argument("--operator-token", default=None, help="what POST/DELETE /finetune need when the server is "
                     "reachable from other machines (default: $SDLAB_OPERATOR_TOKEN, else a new one, printed)")
    srv.set_defaults(func=_serve)

    demo = sub.add_parser("feedback-demo", help="simulated raters who like one colour rate sdlab-tiny's images; "
                          "fine-tune on what they liked; measure the shift on held-out prompts")
    demo.add_argument("--model", default=None, help="default: sdlab-tiny (the checker reads its shapes and colours)")
    demo.add_argument("--colour", default="blue", help="the colour the simulated raters like")
    demo.add_argument("--images", type=int, default=128, help="images the raters rate")
    demo.add_argument("--test-images", type=int, default=32, help="held-out images measured before and after")
    demo.add_argument("--control-images", type=int, default=16,
                      help="held-out prompts that name a colour, to see what else changed (0: skip)")
    demo.add_argument("--num-inference-steps", type=int, default=20)
    demo.add_argument("--finetune-steps", type=int, default=150)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--models-dir", default=None, help="where the new model version goes (default: a temp folder)")
    demo.set_defaults(func=_feedback_demo)

    ft = sub.add_parser("finetune", help="fine-tune on the liked images of a feedback store, or on your own "
                        "pictures (--images): a new model version, loaded by its name")
    ft.add_argument("--store", default=None, help="the feedback store's folder (default: ./feedback, which `sdlab "
                    "serve` keeps)")
    ft.add_argument("--images", default=None, metavar="DIR", help="fine-tune on your own pictures instead (png, jpg, "
                    "webp; any size): each captioned by the .txt file of its name beside it, a metadata.jsonl, or "
                    "--prompt")
    ft.add_argument("--prompt", default=None, help="with --images: the caption of every picture that has none, "
                    "DreamBooth style: a rare word for your subject, then its class, e.g. \"a photo of sks dog\"")
    ft.add_argument("--name", default=None, help="what the versions are called, e.g. my-dog: they load as my-dog-v1, "
                    "my-dog-v2, … (default: the model's name, then -feedback, or -ft with --images)")
    ft.add_argument("--model", default=None, help="the model to fine-tune, which made the store's images "
                    "(default: sdlab-tiny)")
    ft.add_argument("--method", default="lora", choices=["lora", "full"])
    ft.add_argument("--steps", type=int, default=200, help="training steps")
    ft.add_argument("--learning-rate", type=float, default=None, help="default: 1e-3 for LoRA, 1e-4 for full")
    ft.add_argument("--min-rating", type=float, default=4, help="train on images with at least this mean rating")
    ft.add_argument("--models-dir", default=None, help="where the new version goes (default: the first folder "
                    "$SDLAB_MODELS lists, else STORE/models: ./feedback/models, where `sdlab serve` and load_pipeline "
                    "look for versions by name)")
    ft.set_defaults(func=_finetune)

    grd = sub.add_parser("grade", help="run student notebooks and their hidden tests; write grades.csv and an "
                         "HTML report")
    grd.add_argument("submissions", nargs="*", help="notebooks, or folders of them (alice/01_loading.ipynb is "
                     "alice's 01_loading); none: only rebuild the report in --out")
    grd.add_argument("--against", default="solutions", help="the completed notebooks, with the hidden tests")
    grd.add_argument("--out", default="report", help="where grades.csv and index.html go")
    grd.add_argument("--timeout", type=int, default=600, help="seconds one cell may run")
    grd.add_argument("--jobs", type=int, default=1, help="notebooks graded at once, one kernel each")
    grd.add_argument("--model", default=None, help="the model the notebooks load (default: sdlab-tiny, offline)")
    grd.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a parameter in every notebook whose parameters cell has it, e.g. -p image_count 2")
    grd.add_argument("--sandbox", choices=["auto", "require", "off"], default="auto",
                     help="run each kernel in bubblewrap: no network, nothing of yours visible but Python and "
                     "the models, only its copy writable (auto: where bwrap works, else a warning; require: "
                     "refuse without it)")
    grd.add_argument("--memory", type=float, default=8, help="GiB of memory one process of a submission may "
                     "allocate (RLIMIT_DATA)")
    grd.add_argument("--processes", type=int, default=1024, help="processes and threads a submission may run")
    grd.set_defaults(func=_grade)

    faces = sub.add_parser("faces", help="repair the faces in a photo (GFPGAN, or 'classical' offline)")
    faces.add_argument("image", nargs="?")
    faces.add_argument("--out")
    faces.add_argument("--restorer", default="GFPGANv1.4", help="GFPGANv1.4, GFPGANv1.3, RestoreFormer, classical")
    faces.add_argument("--upscale", type=float, default=1)
    faces.add_argument("--weight", type=float, default=1.0, help="blend: 0 keeps the input, 1 the restored face")
    faces.add_argument("--weights-dir", default=None)
    faces.add_argument("--device", default="auto")
    faces.add_argument("--backend", default="sdlab", choices=["sdlab", "gfpgan"])
    faces.add_argument("--download", action="store_true", help="download the restorer's weights (needs internet)")
    faces.set_defaults(func=_faces)

    bench = sub.add_parser("bench", help="time the course's loop against sdlab's batched calls, side by side")
    bench.add_argument("--quick", action="store_true", help="CPU-sized run: 8 images, under a minute")
    bench.add_argument("--model", default=None)
    bench.add_argument("--images", type=int, default=16)
    bench.add_argument("--steps", type=int, default=None,
                       help="default: the model's (20 for sdlab-tiny, 50 for SD 1.5)")
    bench.add_argument("--fast", action="store_true",
                       help="also time channels_last, fused QKV, attention kernels and torch.compile (GPUs)")
    bench.add_argument("--attention", nargs="*", choices=[k for k in ATTENTION_KERNELS if k != "default"],
                       default=None, help="with --fast, the attention kernels to time (default: cudnn on a GPU)")
    bench.add_argument("--tune-convolutions", action=argparse.BooleanOptionalAction, default=None,
                       help="with --fast, also time cuDNN choosing convolution algorithms by timing them "
                            "(default: on a GPU)")
    bench.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                       help="with --fast, torch.compile's mode (default: reduce-overhead on a GPU, else default)")
    bench.add_argument("--profile", action="store_true",
                       help="also show where one batch's time goes (convolution, attention, matmul, norm), "
                            "before compiling and after")
    bench.add_argument("--size", type=int, default=None, help="image size (default: the model's; 512 for SD 1.5)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--dtype", default="auto")
    bench.add_argument("--serve", action="store_true", help="time the class server instead: N clients × M requests "
                       "of one image at once over HTTP against the same requests one by one (--quick: 4 × 2, 4 steps)")
    bench.add_argument("--clients", type=int, default=8, help="with --serve, clients sending at once (default 8)")
    bench.add_argument("--requests", type=int, default=4, help="with --serve, requests per client (default 4)")
    bench.add_argument("--max-batch", type=int, default=8, help="with --serve, the server's --max-batch")
    bench.add_argument("--batch-window-ms", type=float, default=15,
                       help="with --serve, the server's --batch-window-ms")
    bench.add_argument("--flop-limit", type=float, default=None,
                       help="the device's FLOP/s limit, to print the achieved fraction (e.g. 3.3e11)")
    bench.set_defaults(func=_bench)

    sub.add_parser("models", help="list the models").set_defaults(func=_list)
    listed = sub.add_parser("schedulers", help="list the schedulers that can run a model at 1 to 50 steps")
    listed.add_argument("--model", default=None, help="the model (default: sdlab-tiny)")
    listed.add_argument("--all", action="store_true", help="every scheduler name, whatever the model")
    listed.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    if getattr(args, "model", "x") is None:
        args.model = default_model()
    try:
        args.func(args)
    except SdlabInputError as err:
        print(f"sdlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
