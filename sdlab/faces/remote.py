"""Face repair on another machine: a Gradio app with a `/restore_faces` endpoint.

The course first repaired faces by sending the picture to a GFPGAN web demo; sdlab's own app
(`sdlab serve`) exposes the same chain as `/restore_faces(image, upscale, weight) -> image`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from ..errors import SdlabInputError, check
from .images import as_pil, check_upscale, check_weight


def restore_remote(image, url: str, *, upscale: float = 2, weight: float = 1.0,
                   api_name: str = "/restore_faces", token: str | None = None) -> Image.Image:
    """Send `image` to the Gradio app at `url` and return the repaired picture it sends back.

    url: the app's address ("http://127.0.0.1:7860/", a share link, or a Hugging Face Space id).
    upscale/weight: as in `restore_faces`; checked here, before anything is sent.
    token: a Hugging Face token, only for a private Space (read it from the environment, never type it in).
    """
    # 1. Check inputs
    image = as_pil(image)
    upscale, weight = check_upscale(upscale), check_weight(weight)
    check(isinstance(url, str) and url.strip() != "", f"url must be the app's address, got {url!r}")
    try:
        import httpx  # optional dependency (gradio_client, with its httpx)
        from gradio_client import Client, handle_file  # optional dependency (gradio_client, with its httpx)
    except ImportError:
        raise ImportError("restore_remote needs gradio_client: pip install gradio_client") from None

    # 2. Connect, send the picture as a PNG file, get a file back
    try:
        client = Client(url, token=token, verbose=False, analytics_enabled=False)
    except (OSError, ValueError, httpx.HTTPError) as error:  # refused, unknown host, not a Gradio app…
        raise SdlabInputError(f"could not connect to a Gradio app at {url!r} ({type(error).__name__}: {error}); "
                              f"is it running? (start sdlab's with `sdlab serve`)") from error
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.png"
        image.save(path)
        try:
            result = client.predict(handle_file(str(path)), upscale, weight, api_name=api_name)
        except ValueError as error:
            if "api_name" not in str(error) and "endpoint" not in str(error).lower():
                raise
            endpoints = f"{url.rstrip('/')}/?view=api"
            raise SdlabInputError(f"the app at {url!r} has no {api_name!r} endpoint ({error}); "
                                  f"check api_name, or open {endpoints} to see its endpoints") from error
    # 3. Read the returned file (gradio_client downloads it to a temporary folder)
    if isinstance(result, dict):
        result = result.get("path") or result.get("url")
    with Image.open(result) as returned:
        return returned.convert("RGB")
