"""The class server and the models a class makes with it."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import SdlabInputError
from .command import Command


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="preset, folder or hub id (default: sdlab-tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 keeps it on this machine")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--max-queue", type=int, default=16, help="requests in line at most (the running one "
                        "included); more get 503 with Retry-After")
    parser.add_argument("--max-work", type=float, default=1600, help="the most one request may ask for, in "
                        "image-steps at the model's own size (default 1600: 64 images at 25 steps)")
    parser.add_argument("--max-side", type=int, default=None, help="the largest width or height served (default: 8 "
                        "times the model's own size, e.g. 512 for sdlab-tiny)")
    parser.add_argument("--max-batch", type=int, default=8, help="images in one pipeline call at most: requests that "
                        "arrive together share a call (default 8; 1: one image per call)")
    parser.add_argument("--batch-window-ms", type=float, default=15,
                        help="how long the first request waits for others to share its call (default 15 ms)")
    parser.add_argument("--max-finetune-steps", type=int, default=1000, help="steps one fine-tune may ask for")
    parser.add_argument("--max-finetune-minutes", type=float, default=30, help="a fine-tune stops after this long")
    parser.add_argument("--keep-versions", type=int, default=5, help="fine-tuned versions kept (the oldest go)")
    parser.add_argument("--operator-token", default=None, help="what POST/DELETE /finetune need when the server is "
                        "reachable from other machines (default: $SDLAB_OPERATOR_TOKEN, else a new one, printed)")


def _serve(args) -> None:
    from ..app import serve  # keeps `sdlab --help` fast
    from ..app.feedback import FinetuneLimits  # keeps `sdlab --help` fast

    limits = FinetuneLimits(args.max_finetune_steps, args.max_finetune_minutes, args.keep_versions)
    serve(args.model, host=args.host, port=args.port, share=args.share, max_queue=args.max_queue,
          max_work=args.max_work, max_side=args.max_side, finetune_limits=limits, token=args.operator_token,
          max_batch=args.max_batch, batch_window=args.batch_window_ms / 1000)


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default="feedback",
                        help="the feedback store's folder (`sdlab serve` keeps ./feedback)")
    parser.add_argument("--model", default=None, help="the model that made the images (default: sdlab-tiny)")
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: 1e-3 for LoRA, 1e-4 for full")
    parser.add_argument("--min-rating", type=float, default=4, help="train on images with at least this mean rating")
    parser.add_argument("--models-dir", default=None, help="where the new version goes (default: STORE/models)")


def _finetune(args) -> None:
    from ..feedback import FeedbackStore  # keeps `sdlab --help` fast
    from ..finetune import Example, FinetuneConfig, start_finetune  # keeps `sdlab --help` fast
    from ..pipelines import load_pipeline, model_name  # keeps `sdlab --help` fast

    if not (Path(args.store) / "feedback.sqlite3").is_file():
        raise SdlabInputError(f"{args.store} holds no feedback store; give the folder that `sdlab serve` kept "
                              f"(./feedback where it ran) with --store")
    config = FinetuneConfig(method=args.method, steps=args.steps, min_rating=args.min_rating,
                            learning_rate=args.learning_rate).checked()
    pipe = load_pipeline(args.model, progress=False)
    liked = FeedbackStore(args.store).liked(config.min_rating, model=model_name(pipe))  # the model's own images
    if not liked:
        raise SdlabInputError(f"no image in {args.store} made with {model_name(pipe)} has a mean rating of "
                              f"{config.min_rating:g} or more; rate some in the app, lower --min-rating, or name "
                              f"the model that made them with --model")
    examples = [Example(item.image, item.prompt, item.id) for item in liked]
    job = start_finetune(pipe, examples, config, models_dir=args.models_dir or Path(args.store) / "models")
    while job.running:
        print(job.status().line(), flush=True)
        time.sleep(2)
    print(job.status().line())
    print(f"new model: {job.wait().folder} (load it with sdlab.finetune.load_version)")


def _feedback_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="default: sdlab-tiny (the checker reads its shapes and colours)")
    parser.add_argument("--colour", default="blue", help="the colour the simulated raters like")
    parser.add_argument("--images", type=int, default=128, help="images the raters rate")
    parser.add_argument("--test-images", type=int, default=32, help="held-out images measured before and after")
    parser.add_argument("--control-images", type=int, default=16,
                        help="held-out prompts that name a colour, to see what else changed (0: skip)")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", default=None, help="where the new model version goes (default: a temp folder)")


def _feedback_demo(args) -> None:
    from ..finetune import FinetuneConfig  # keeps `sdlab --help` fast
    from ..pipelines import load_pipeline  # keeps `sdlab --help` fast
    from ..tiny.preference import preference_demo  # keeps `sdlab --help` fast

    pipe = load_pipeline(args.model, progress=False)
    result = preference_demo(pipe, colour=args.colour, rating_images=args.images, test_images=args.test_images,
                             control_images=args.control_images, num_inference_steps=args.num_inference_steps,
                             config=FinetuneConfig(steps=args.finetune_steps, learning_rate=2e-3), seed=args.seed,
                             models_dir=args.models_dir, on_status=lambda status: print(
                                 status.line(), end="\r" if sys.stdout.isatty() else "\n", flush=True))
    print()
    print("\n".join(result.lines()))


COMMANDS = [
    Command("serve", "the web app: Gradio UI and REST API in one server", _serve_arguments, _serve),
    Command("finetune", "fine-tune on the liked images of a feedback store: a new model version",
            _finetune_arguments, _finetune),
    Command("feedback-demo", "simulated raters who like one colour rate sdlab-tiny's images; fine-tune on what they "
            "liked; measure the shift on held-out prompts", _feedback_demo_arguments, _feedback_demo),
]
