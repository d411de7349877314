"""What a careless or hostile student of a shared class can send, and what it must not do.

A prompt, comment or user name stored by the class server is shown later in the instructor's
JupyterLab, in the Gradio UI and in reports: wherever it appears it must stay text. ipywidgets'
HTML widget sets its value as the page's innerHTML, so these tests put every HTML value sdlab
builds from stored text into a real page the same way, in headless Chromium, with payloads that
would run script, and check that nothing ran and the words are shown as typed.
"""
import pytest
from PIL import Image

from sdlab.checks import Passed
from sdlab.feedback import FeedbackStore, rating_widget
from sdlab.generation import GeneratedImage, GenerationParams

#: Each payload sets window.pwned if it runs (the contents-API call of the report would go there).
PAYLOADS = (
    '<img src=x onerror="window.pwned=1">',
    '<details open ontoggle="window.pwned=1"><summary>x</summary></details>',
    '"><iframe srcdoc="<script>parent.pwned=1</script>"></iframe>',
    "<a href=\"javascript:window.pwned=1\" id=go>click</a>",
)


def stored(prompt: str, seed: int = 1) -> GeneratedImage:
    params = GenerationParams(prompt=prompt, seed=seed, num_inference_steps=2, guidance_scale=7.5, height=64,
                              width=64, scheduler="DDIM", model="tiny-random")
    return GeneratedImage(Image.new("RGB", (64, 64), (30, 70, 230)), params, 0.01)


def html_values(widget) -> list[str]:
    """The value of every ipywidgets HTML widget inside `widget`."""
    import ipywidgets as w

    found = [widget.value] if isinstance(widget, w.HTML) else []
    for child in getattr(widget, "children", ()):
        found += html_values(child)
    return found


def rendered_as_ipywidgets_does(browser, values: list[str]) -> tuple[bool, list[str]]:
    """Set each value as innerHTML of its own element (ipywidgets' HTMLView.update), follow any link
    a payload made, and say whether script ran and what text the page shows."""
    browser.get("about:blank")
    browser.execute_script(
        "window.pwned = 0; for (const v of arguments[0]) { const d = document.createElement('div');"
        " d.className = 'widget-html-content'; d.innerHTML = v; document.body.appendChild(d); }"
        " for (const a of document.querySelectorAll('a')) a.click();", values)
    browser.execute_script("return new Promise(r => setTimeout(r, 300))")  # let onerror/onload fire
    texts = browser.execute_script("return [...document.querySelectorAll('.widget-html-content')]"
                                   ".map(d => d.textContent)")
    return bool(browser.execute_script("return window.pwned")), texts


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_stored_prompt_stays_text_in_the_rating_widget(browser, tmp_path, payload):
    with FeedbackStore(tmp_path / "fb") as store:
        ids = store.add_generations([stored(payload)])
        panel = rating_widget(store, ids, user="ana")
        values = html_values(panel)
        ran, texts = rendered_as_ipywidgets_does(browser, values)
        assert not ran, f"a stored prompt ran script in the rating widget: {values}"
        assert f"#{ids[0]}: {payload}" in texts  # shown exactly as the student typed it


def test_a_passed_check_shows_its_message_as_text(browser):
    shown = Passed(PAYLOADS[1])._repr_html_()
    ran, texts = rendered_as_ipywidgets_does(browser, [shown])
    assert not ran and texts == [f"✓ {PAYLOADS[1]}"]


def test_the_payloads_would_run_unescaped(browser):
    """The page above does run each payload when it is not escaped: the tests can fail."""
    for payload in PAYLOADS:
        ran, _ = rendered_as_ipywidgets_does(browser, [payload])
        assert ran, payload
