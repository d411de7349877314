"""Looking at the feedback store in a notebook: a captioned grid of stored images and a widget to
rate them."""
from __future__ import annotations

import html
import io

from PIL import Image, ImageDraw

from ..errors import SdlabInputError, check
from ..grids import _font, display_scale, enlarge, image_grid
from .records import StoredImage
from .store import FeedbackStore


def captioned_grid(items: list[StoredImage], cols: int = 8, cell: int = 96) -> Image.Image:
    """Stored images in a grid, each captioned with its id and mean rating (a PIL image)."""
    check(bool(items), "no images to show; search with fewer filters")
    font, band = _font(12), 16
    cards = []
    for item in items:
        card = Image.new("RGB", (cell, cell + band), "white")
        card.paste(item.image.convert("RGB").resize((cell, cell), Image.NEAREST))
        rating = f"{item.mean_rating:.1f}/5" if item.mean_rating is not None else "unrated"
        ImageDraw.Draw(card).text((2, cell + 1), f"#{item.id} {rating}", fill="black", font=font)
        cards.append(card)
    return image_grid(cards, cols=min(cols, len(cards)))


def rating_widget(store: FeedbackStore, image_ids: list[int], *, user: str = "", scale: int | None = None):
    """ipywidgets: each image with 1–5 star buttons, thumbs, a comment box and Save (writes to `store`)."""
    import ipywidgets as w  # notebooks only (ipywidgets is heavy)

    cards = []
    for image_id in image_ids:
        item = store.get(image_id)
        image = item.image
        k = scale or display_scale(image, 128)
        buffer = io.BytesIO()
        enlarge(image, k).save(buffer, format="PNG")
        stars = w.ToggleButtons(options=[("👎", 1), ("2", 2), ("3", 3), ("4", 4), ("👍 5", 5)], value=None,
                                style={"button_width": "34px"})
        comment = w.Text(placeholder="comment (optional)", layout=w.Layout(width=f"{image.width * k}px"))
        save, note = w.Button(description="Save", button_style="primary", layout=w.Layout(width="70px")), w.HTML()

        def on_save(_, image_id=image_id, stars=stars, comment=comment, note=note):
            try:
                check(stars.value is not None, "pick a rating first")
                store.add_feedback(image_id, stars.value, comment.value, user)
                note.value = f"<span style='color:#080'>saved ★{int(stars.value)}</span>"
            except SdlabInputError as err:
                note.value = f"<b style='color:#b00'>{html.escape(str(err))}</b>"

        save.on_click(on_save)
        # a stored prompt is whatever a client sent: shown as text, never as HTML (an HTML widget sets
        # innerHTML, so "<img onerror=...>" would run in the viewer's browser)
        title = w.HTML(f"<small>#{int(image_id)}: {html.escape(item.prompt)}</small>")
        cards.append(w.VBox([title, w.Image(value=buffer.getvalue()),
                             stars, comment, w.HBox([save, note])]))
    return w.GridBox(cards, layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(280px, 1fr))"))

