"""Spreading many generations over processes or GPUs with accelerate.

    accelerate launch --num_processes 2 -m sdlab.distributed prompts.txt --out outputs/

Each process loads the pipeline once, takes its share of the jobs with
`PartialState.split_between_processes`, and the main process gathers the results in the
original order and writes the PNGs. Seeds belong to jobs, not to processes, so the images are
the same as a single-process run, image for image.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import SdlabInputError, writable_folder
from .presets import default_model


@dataclass(frozen=True)
class Job:
    """One image to make: a prompt and its seed (other settings are shared)."""

    index: int
    prompt: str
    seed: int


def make_jobs(prompts: list[str], seed: int, images_per_prompt: int = 1) -> list[Job]:
    """Jobs in order; job k gets seed `seed + k`, whatever process runs it."""
    texts = [p for p in prompts for _ in range(images_per_prompt)]
    return [Job(k, text, seed + k) for k, text in enumerate(texts)]


def batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Fixed groups of jobs. Processes share out whole batches, so every batch — and so every
    image, to the last bit — is the same whether one process or many run them."""
    return [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]


def run_batches(pipe, groups: list[list[Job]], **settings) -> list:
    """Generate each batch with one call; returns (job index, GeneratedImage) pairs."""
    from .generation import generate  # heavy: sdlab.generation loads torch and diffusers

    done = []
    for chunk in groups:
        result = generate(pipe, [j.prompt for j in chunk], seed=[j.seed for j in chunk], **settings)
        done += [(job.index, item) for job, item in zip(chunk, result, strict=True)]
    return done


def generate_distributed(model: str, jobs: list[Job], batch_size: int = 8, **settings) -> list | None:
    """Split `jobs` over the processes accelerate started; the main process gets all results
    in job order (other processes get None)."""
    from accelerate import PartialState  # heavy: accelerate loads only to generate
    from accelerate.utils import gather_object  # heavy: accelerate loads only to generate

    from .pipelines import load_pipeline  # heavy: sdlab.pipelines loads torch and diffusers

    state = PartialState()
    pipe = load_pipeline(model, device=str(state.device) if state.device.type != "cpu" else "cpu", progress=False)
    with state.split_between_processes(batches(jobs, batch_size)) as mine:
        done = run_batches(pipe, list(mine), **settings)
    # PIL images travel between processes as pickles
    gathered = gather_object(done)
    if not state.is_main_process:
        return None
    return [item for _, item in sorted(gathered, key=lambda pair: pair[0])]


def _check_settings(jobs: list[Job], args) -> None:
    """The generation settings and the output folder, before any process loads a model."""
    from .generation import check_guidance, check_steps  # heavy: sdlab.generation loads torch and diffusers
    from .seeds import check_seed  # heavy: sdlab.seeds loads torch

    if args.steps is not None:  # None: the model's own
        check_steps(args.steps, "--steps")
    if args.guidance is not None:
        check_guidance(args.guidance, "--guidance")
    check_seed(jobs[0].seed, "--seed")
    check_seed(jobs[-1].seed, f"--seed (the last image's, {len(jobs) - 1} on)")
    writable_folder(args.out)


def main(argv: list[str] | None = None) -> int:
    from .metadata import save_png  # heavy: sdlab.metadata loads torch and diffusers

    parser = argparse.ArgumentParser(prog="python -m sdlab.distributed",
                                     description="generate a prompt list over processes/GPUs (accelerate launch)")
    parser.add_argument("prompts", help="a text file, one prompt per line")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", "--images-per-prompt", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args(argv)
    # 1. Check inputs, before any process loads a model
    for flag, value in (("--batch-size", args.batch_size), ("--images-per-prompt", args.images_per_prompt)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    path = Path(args.prompts)
    if not path.is_file():
        parser.error(f"no prompt file at {path}: give a text file with one prompt per line")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        parser.error(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8")
    if not prompts:
        parser.error(f"{path} holds no prompt: write one prompt per line")
    jobs = make_jobs(prompts, args.seed, args.images_per_prompt)
    try:
        _check_settings(jobs, args)
        # 2. Generate, each process its share, and write the images in order
        results = generate_distributed(args.model or default_model(), jobs, args.batch_size,
                                       num_inference_steps=args.steps, guidance_scale=args.guidance)
    except SdlabInputError as err:  # e.g. a model that is neither a preset nor a folder
        parser.error(str(err))
    if results is not None:
        for k, item in enumerate(results):
            print(save_png(item, Path(args.out) / f"{k:04d}_seed{item.params.seed}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
