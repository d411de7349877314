"""Face repair on a photo, and the benchmarks."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SdlabInputError, writable_folder
from ..speed import ATTENTION_KERNELS, COMPILE_MODES
from .command import Command


def _faces_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?")
    parser.add_argument("--out")
    parser.add_argument("--restorer", default="GFPGANv1.4", help="GFPGANv1.4, GFPGANv1.3, RestoreFormer, classical")
    parser.add_argument("--upscale", type=float, default=1)
    parser.add_argument("--weight", type=float, default=1.0, help="blend: 0 keeps the input, 1 the restored face")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="sdlab", choices=["sdlab", "gfpgan"])
    parser.add_argument("--download", action="store_true", help="download the restorer's weights (needs internet)")


def _faces(args) -> None:
    from PIL import Image, ImageOps  # keeps `sdlab --help` fast

    from ..faces import download_weights, restore_faces  # keeps `sdlab --help` fast
    from ..metadata import open_image  # keeps `sdlab --help` fast

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


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: 8 images, under a minute")
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None,
                        help="default: the model's (20 for sdlab-tiny, 50 for SD 1.5)")
    parser.add_argument("--fast", action="store_true",
                        help="also time channels_last, fused QKV, attention kernels and torch.compile (GPUs)")
    parser.add_argument("--attention", nargs="*", choices=[k for k in ATTENTION_KERNELS if k != "default"],
                        default=None, help="with --fast, the attention kernels to time (default: cudnn on a GPU)")
    parser.add_argument("--tune-convolutions", action=argparse.BooleanOptionalAction, default=None,
                        help="with --fast, also time cuDNN choosing convolution algorithms by timing them "
                             "(default: on a GPU)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="with --fast, torch.compile's mode (default: reduce-overhead on a GPU, else default)")
    parser.add_argument("--profile", action="store_true",
                        help="also show where one batch's time goes (convolution, attention, matmul, norm), "
                             "before compiling and after")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the model's; 512 for SD 1.5)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--serve", action="store_true",
                        help="time the class server instead: N clients × M requests of one image at once over HTTP "
                             "against the same requests one by one (--quick: 4 × 2, 4 steps)")
    parser.add_argument("--clients", type=int, default=8, help="with --serve, clients sending at once (default 8)")
    parser.add_argument("--requests", type=int, default=4, help="with --serve, requests per client (default 4)")
    parser.add_argument("--max-batch", type=int, default=8, help="with --serve, the server's --max-batch")
    parser.add_argument("--batch-window-ms", type=float, default=15,
                        help="with --serve, the server's --batch-window-ms")
    parser.add_argument("--flop-limit", type=float, default=None,
                        help="the device's FLOP/s limit, to print the achieved fraction (e.g. 3.3e11)")


def _bench(args) -> None:
    if args.serve:
        from ..bench.serve import run_serve  # keeps `sdlab --help` fast

        options = (dict(clients=4, requests=2, steps=4, rounds=1) if args.quick
                   else dict(clients=args.clients, requests=args.requests, steps=None, rounds=2))
        if args.steps is not None:
            options["steps"] = args.steps
        for line in run_serve(args.model, max_batch=args.max_batch, batch_window=args.batch_window_ms / 1000,
                              device=args.device, dtype=args.dtype, **options):
            print(line, flush=True)
        return
    from ..bench import run  # keeps `sdlab --help` fast

    images = 8 if args.quick else args.images
    for line in run(args.model, images=images, steps=args.steps, device=args.device, dtype=args.dtype,
                    flop_limit=args.flop_limit, fast=args.fast, size=args.size, attention=args.attention,
                    tune_convolutions=args.tune_convolutions, compile_mode=args.compile_mode,
                    profile_batch=args.profile):
        print(line, flush=True)


COMMANDS = [
    Command("faces", "repair the faces in a photo (GFPGAN, or 'classical' offline)", _faces_arguments, _faces),
    Command("bench", "time the course's loop against sdlab's batched calls, side by side", _bench_arguments, _bench),
]
