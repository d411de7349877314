"""Making images: the commands a student runs."""
from __future__ import annotations

import argparse
import sys

from ..errors import writable_folder
from ..presets import PRESETS, named_versions
from .command import Command


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("--model", default=None, help="preset, folder or hub id (default: sdlab-tiny)")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("-n", type=int, default=1, help="number of images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _generate(args) -> None:
    from ..generation import generate  # keeps `sdlab --help` fast
    from ..metadata import save_png  # keeps `sdlab --help` fast
    from ..pipelines import load_pipeline  # keeps `sdlab --help` fast

    out = writable_folder(args.out)  # before the work, so no image is made only to be lost
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet)
    result = generate(pipe, args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                      num_images_per_prompt=args.n, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      height=args.height, width=args.width, scheduler=args.scheduler)
    for item in result:
        path = save_png(item, out / f"{item.params.seed}.png")
        print(path)
    print(f"{len(result)} image(s) in {result.seconds:.2f} s", file=sys.stderr)


def _regenerate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("png")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", dest="use_model", default=None,
                        help="the model to use (default: the one the PNG names, if it is a preset or inside a models "
                             "folder)")
    parser.add_argument("--trust-model", action="store_true", help="load the model the PNG names from wherever it is")
    parser.add_argument("--force", action="store_true", help="run a job above the work limit (1600 image-steps)")


def _regenerate(args) -> None:
    from ..metadata import open_image, pixel_difference, regenerate, save_png  # keeps `sdlab --help` fast

    pipe = None
    if args.use_model is not None:  # not `model`: main() fills that with the default model
        from ..pipelines import load_pipeline  # keeps `sdlab --help` fast

        pipe = load_pipeline(args.use_model)
    item = regenerate(args.png, pipe, force=args.force, trust_model=args.trust_model)
    save_png(item, args.out)
    difference = pixel_difference(open_image(args.png), item.image)
    if difference is None:
        print(f"{args.out} (identical to {args.png})")
        return
    print(f"{args.out} (DIFFERENT from {args.png}: {difference})")
    raise SystemExit(1)


def _schedulers_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="the model (default: sdlab-tiny)")
    parser.add_argument("--all", action="store_true", help="every scheduler name, whatever the model")


def _models(args) -> None:
    for preset in PRESETS.values():
        print(f"{preset.name:12} {preset.source:45} {preset.description}")
    for label, version in named_versions().items():  # fine-tuned, in $SDLAB_MODELS or ./feedback/models
        print(f"{label:12} {str(version.folder):45} fine-tuned from {version.info.get('base_model', '?')} "
              f"({version.info.get('method', '?')}, {version.info.get('examples', '?')} images)")


def _schedulers(args) -> None:
    from ..schedulers import ALIASES, scheduler_names, schedulers_for  # keeps `sdlab --help` fast

    names = scheduler_names()
    if not args.all:
        from ..pipelines import load_pipeline  # keeps `sdlab --help` fast

        names = schedulers_for(load_pipeline(args.model, progress=False).scheduler.config)
        left = [name for name in scheduler_names() if name not in names]
        if left:
            print(f"not offered for {args.model} (they cannot run its noise schedule at every step count from 1 "
                  f"to 50): {', '.join(left)}", file=sys.stderr)
    for name in names:
        print(name, *(f"({a})" for a, n in ALIASES.items() if n == name and a.startswith("K_")))


COMMANDS = [
    Command("generate", "generate images and save them as PNGs with their parameters", _generate_arguments, _generate),
    Command("regenerate", "make an image again from its PNG metadata", _regenerate_arguments, _regenerate),
    Command("models", "list the models", None, _models),
    Command("schedulers", "list the schedulers that can run a model at 1 to 50 steps", _schedulers_arguments,
            _schedulers),
]
