"""A real browser uses the web app: headless Chromium (Selenium + chromedriver) on 127.0.0.1.

It types a prompt, clicks Generate, waits for the image, checks that the PNG the page shows
keeps its parameters, and saves a screenshot (in the test's tmp_path, copied to
report/app-browser.png so it can be looked at).
"""
import io
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

import sdlab.app
from sdlab.metadata import read_params

REPORT = Path(__file__).resolve().parent.parent / "report" / "app-browser.png"
PROMPT = "a small red circle on a blue background"


@pytest.fixture
def server(tiny_pipe):
    with sdlab.app.launch(tiny_pipe, inline=False) as running:
        yield running


def test_a_browser_generates_an_image(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as appears
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url)
    prompt = wait.until(appears.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
    prompt.send_keys(PROMPT)
    seed = wait.until(appears.element_to_be_clickable((By.CSS_SELECTOR, "#seed input")))  # the page renders in parts
    seed.clear()
    seed.send_keys("42")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    image = wait.until(appears.visibility_of_element_located((By.CSS_SELECTOR, "#gallery img")))
    wait.until(appears.text_to_be_present_in_element((By.CSS_SELECTOR, "#summary"), "seed 42"))
    assert image.get_attribute("naturalWidth") == "64"
    png = Image.open(io.BytesIO(httpx.get(image.get_attribute("src"), timeout=10).content))
    params = read_params(png)  # the file the page shows keeps its parameters
    assert (params.prompt, params.seed, params.model) == (PROMPT, 42, "tiny-random")

    shot = tmp_path / "app-browser.png"
    assert browser.save_screenshot(str(shot))
    REPORT.parent.mkdir(exist_ok=True)
    shutil.copy(shot, REPORT)
    assert Image.open(shot).size[0] >= 1000


def test_the_api_docs_render_from_files_the_server_serves(browser, server):
    """/docs and /redoc load Swagger UI and ReDoc from the server itself: a classroom may be offline."""
    from openapi_spec_validator import validate
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    for page in ("docs", "redoc"):
        html = httpx.get(server.url + page, timeout=30).text
        assets = [part.split('"')[1] for part in html.split("src=")[1:]] + \
                 [part.split('"')[1] for part in html.split('href=')[1:] if part.startswith('"')]
        assert assets and all(url.startswith("/") for url in assets), assets  # nothing from a CDN
        for url in assets:
            assert httpx.get(server.url.rstrip("/") + url, timeout=30).status_code == 200, url
    browser.get(server.url + "docs")
    operation = (By.ID, "operations-generate-text2img_text2img_post")
    WebDriverWait(browser, 60).until(seen.presence_of_element_located(operation))
    assert "AUTOMATIC1111" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui").text
    browser.get(server.url + "redoc")
    WebDriverWait(browser, 60).until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), "sdlab"))

    schema = httpx.get(server.url + "openapi.json", timeout=30).json()
    validate(schema)  # a valid OpenAPI document, which names every field the server accepts
    text2img = schema["components"]["schemas"]["Text2ImgRequest"]["properties"]
    assert {"cfg_scale", "steps", "number_of_images"} <= set(text2img)
    assert "mask" in schema["components"]["schemas"]["InpaintingRequest"]["properties"]


def test_an_img_tag_shows_the_get_routes_png(browser, server):
    """A web page can show a generated image with nothing but <img src="…/text2img?prompt=…">."""
    from urllib.parse import quote

    from selenium.webdriver.support.ui import WebDriverWait

    source = f"{server.url}text2img?prompt={quote(PROMPT)}&seed=7&steps=2"
    browser.get(server.url + "health")  # a page of the server's own, where the tag is added
    browser.execute_script("const i = document.createElement('img'); i.id = 'made'; i.src = arguments[0];"
                           "document.body.appendChild(i)", source)
    loaded = "const i = document.getElementById('made'); return i.complete ? i.naturalWidth : -1"
    WebDriverWait(browser, 60).until(lambda b: b.execute_script(loaded) != -1)
    assert browser.execute_script(loaded) == 64  # loaded and decoded: the model's 64 pixels
    png = Image.open(io.BytesIO(httpx.get(source, timeout=60).content))
    assert read_params(png).seed == 7


def test_a_picture_of_the_app_with_its_image_for_readers_without_a_server(server, capsys, monkeypatch):
    """What notebook 07 keeps in its outputs: the page after Generate, taken by headless Chromium."""
    import numpy as np

    from sdlab.app import screenshot as shots

    picture = shots.screenshot(server.url, prompt=PROMPT, seed=42)
    assert picture.width == 1280 and picture.height >= 700  # the window less its frame
    pixels = np.asarray(picture, dtype=float)
    assert pixels.std() > 10  # a page with controls and an image, not a blank frame
    monkeypatch.setattr(shots, "CHROMIUM_NAMES", ("no-such-browser",))
    assert shots.screenshot(server.url) is None
    assert "lacks Chromium" in capsys.readouterr().out
