"""The class server and the models a class makes with it."""
from __future__ import annotations

import argparse
import sys
import time

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
    parser.add_argument("--store", default=None,
                        help="the feedback store's folder (default: ./feedback, which `sdlab serve` keeps)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="fine-tune on your own pictures instead (png, jpg, webp; any size): each captioned by "
                             "the .txt file of its name beside it, a metadata.jsonl, or --prompt")
    parser.add_argument("--prompt", default=None,
                        help="with --images: the caption of every picture that has none, DreamBooth style: a rare "
                             "word for your subject, then its class, e.g. \"a photo of sks dog\"")
    parser.add_argument("--name", default=None,
                        help="what the versions are called, e.g. my-dog: they load as my-dog-v1, my-dog-v2, … "
                             "(default: the model's name, then -feedback, or -ft with --images)")
    parser.add_argument("--model", default=None,
                        help="the model to fine-tune, which made the store's images (default: sdlab-tiny)")
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: 1e-3 for LoRA, 1e-4 for full")
    parser.add_argument("--min-rating", type=float, default=4, help="train on images with at least this mean rating")
    parser.add_argument("--models-dir", default=None,
                        help="where the new version goes (default: the first folder $SDLAB_MODELS lists, else "
                             "STORE/models: ./feedback/models, where `sdlab serve` and load_pipeline look for "
                             "versions by name)")


def _finetune(args) -> None:
    from ..finetune import FinetuneConfig, how_to_load, start_finetune  # keeps `sdlab --help` fast
    from ..finetune.examples import existing_store, folder_examples, liked_examples  # keeps `sdlab --help` fast
    from ..finetune.training import default_name  # keeps `sdlab --help` fast
    from ..pipelines import load_pipeline, model_name  # keeps `sdlab --help` fast
    from ..presets import default_models_dir  # keeps `sdlab --help` fast

    if args.images is not None and args.store is not None:
        raise SdlabInputError("give --images (your own pictures) or --store (a feedback store's liked images), "
                              "not both")
    if args.prompt is not None and args.images is None:
        raise SdlabInputError("--prompt captions the pictures of --images DIR; a store's images keep their prompts")
    config = FinetuneConfig(method=args.method, steps=args.steps, min_rating=args.min_rating,
                            learning_rate=args.learning_rate).checked()
    if args.images is not None:
        examples = folder_examples(args.images, args.prompt)  # the pictures' errors before the model loads
        pipe = load_pipeline(args.model, progress=False)
        models_dir, name = args.models_dir or default_models_dir(), args.name or default_name(pipe, "ft")
    else:
        store = existing_store(args.store or "feedback")  # before the model loads
        pipe = load_pipeline(args.model, progress=False)
        examples = liked_examples(store, model_name(pipe), config.min_rating)
        models_dir, name = args.models_dir or default_models_dir(store.folder), args.name
    job = start_finetune(pipe, examples, config, models_dir=models_dir, name=name)
    while job.running:
        print(job.status().line(), flush=True)
        time.sleep(2)
    print(job.status().line())
    version = job.wait()
    print(f"new model: {version.folder} ({how_to_load(version)})")


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
    Command("finetune", "fine-tune on the liked images of a feedback store, or on your own pictures (--images): a "
            "new model version, loaded by its name", _finetune_arguments, _finetune),
    Command("feedback-demo", "simulated raters who like one colour rate sdlab-tiny's images; fine-tune on what they "
            "liked; measure the shift on held-out prompts", _feedback_demo_arguments, _feedback_demo),
]
