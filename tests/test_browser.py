"""The draw-a-digit page in a real browser: headless Chromium draws digits with the mouse against the real server.

Screenshots go to test-artifacts/ (serve-page.png, serve-page-multi.png, serve-page-phone.png, serve-docs.png,
serve-page-correction.png).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a real browser: seconds per test
uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs the serve extra: pip install -e '.[serve]'")
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[dev]'").sync_playwright
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("the browser test needs Chromium: apt-get install chromium, or set CHROMIUM=/path/to/it",
                allow_module_level=True)

from mnist_cnn import images, serve  # noqa: E402 (after the skips: serve needs fastapi)
from mnist_cnn.predict import Predictor  # noqa: E402
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_path(None, min_confidence=0.5)


@pytest.fixture(scope="module")
def server(predictor):
    """The real app on uvicorn, on a free loopback port, in a background thread."""
    yield from run_server(serve.create_app(predictor))


@pytest.fixture(scope="module")
def collecting_server(predictor, tmp_path_factory):
    """The real app, keeping corrections in a fresh samples.db (its path is the fixture's second value)."""
    from mnist_cnn.collect import Collect

    path = tmp_path_factory.mktemp("samples") / "samples.db"
    for url in run_server(serve.create_app(predictor, collect=Collect(path))):
        yield url, path


def run_server(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page; fails the test on any console error or any request to another origin."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    pg = context.new_page()
    errors, foreign = [], []
    pg.on("console", lambda m: m.type == "error" and errors.append(m.text))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: r.url.startswith((server, "data:", "blob:")) or foreign.append(r.url))
    pg.goto(server + "/")
    # A locator, not wait_for_function: polling a JS string needs eval, which the page's CSP forbids.
    pg.locator("#model-info", has_text="Model:").wait_for()
    yield pg
    context.close()
    assert not errors, errors
    assert not foreign, foreign


def stroke(page, points):
    """One mouse stroke through points given as fractions (x, y) of the canvas."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def ellipse(cx, cy, rx, ry, n=36):
    return [(cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n)) for i in range(n + 1)]


ONE = [[(0.52, 0.15), (0.48, 0.85)]]
SEVEN = [[(0.28, 0.2), (0.72, 0.2), (0.45, 0.85)]]
ZERO = [ellipse(0.5, 0.5, 0.22, 0.34)]


def answer(page) -> str:
    """The digit the page shows, once every prediction it asked for has come back."""
    page.wait_for_selector('#result[data-pending="false"]', timeout=15_000)
    return page.locator("#digit").text_content()


def draw(page, strokes) -> str:
    for points in strokes:
        stroke(page, points)
    return answer(page)


def test_drawn_digits_are_recognized(page):
    for strokes, digit in [(ONE, "1"), (SEVEN, "7"), (ZERO, "0")]:
        assert draw(page, strokes) == digit
        state = page.locator("#result").get_attribute("data-state")
        assert state in ("ok", "unsure")
        bars = page.locator("#bars li")
        assert bars.count() == 10 and page.locator("#bars li.top .label").text_content() == digit
        preview = page.locator("#preview")
        assert preview.is_visible() and preview.evaluate("img => img.naturalWidth") == 28
        if digit == "7":
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        page.click("#clear")
        assert answer(page) == "–" and page.locator("#result").get_attribute("data-state") == "idle"


def test_undo_and_keyboard(page):
    page.keyboard.press("Tab")  # the first stop is Undo: the controls are reachable by keyboard
    assert page.evaluate("document.activeElement.id") == "undo"
    draw(page, ZERO)
    stroke(page, [(0.5, 0.1), (0.5, 0.9)])  # a stray stroke through the 0
    page.click("#undo")
    assert answer(page) == "0"
    stroke(page, [(0.5, 0.1), (0.5, 0.9)])
    page.keyboard.press("Control+z")
    assert answer(page) == "0"
    page.keyboard.press("Escape")
    assert answer(page) == "–"
    draw(page, ONE)
    page.focus("#clear")
    page.keyboard.press("Enter")
    assert answer(page) == "–"


def test_upload_an_image(page, predictor, test_split, tmp_path):
    x, y = test_split
    # The oracle: a test digit the CLI path reads right from the very same file.
    for digit, label in zip(x[:20], y[:20]):
        ink = Image.fromarray(255 - digit.numpy()).resize((224, 224), Image.BILINEAR)
        paper = Image.new("L", (300, 260), 250)
        paper.paste(ink, (40, 20))
        buf = io.BytesIO()
        paper.save(buf, format="PNG")
        if predictor.predict_image(images.decode(buf.getvalue())).digit == int(label):
            break
    path = tmp_path / "my-digit.png"
    path.write_bytes(buf.getvalue())
    page.set_input_files("#upload", str(path))
    assert answer(page) == str(int(label))
    assert page.locator("#upload-box").is_visible() and "my-digit.png" in page.locator("#upload-name").text_content()


def test_a_photo_over_the_servers_pixel_limit_is_shrunk_by_the_page(page, predictor, test_split, tmp_path):
    """A 24-megapixel phone photo: the server refuses it as it is (16 MP), so the page must shrink it."""
    x, y = test_split
    digit, label = x[0], int(y[0])
    ink = Image.fromarray(255 - digit.numpy()).resize((1400, 1400), Image.BILINEAR)
    photo = Image.new("L", (6000, 4000), 235)
    photo.paste(ink, (2300, 1300))
    path = tmp_path / "IMG_0001.jpg"
    photo.convert("RGB").save(path, quality=90)
    assert 6000 * 4000 > serve.Limits().max_pixels
    page.set_input_files("#upload", str(path))
    assert answer(page) == str(label)
    assert "of 6000x4000" in page.locator("#upload-name").text_content()


def test_multi_digit_mode(page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.check("#multi")
    assert page.locator("#pad").evaluate("c => c.width / c.height") >= 2
    # "1", then "7", then "0" across the wide canvas (x fractions of a 2:1 canvas).
    stroke(page, [(0.14, 0.15), (0.12, 0.85)])
    stroke(page, [(0.36, 0.2), (0.56, 0.2), (0.44, 0.85)])
    stroke(page, ellipse(0.8, 0.5, 0.09, 0.34))
    assert answer(page) == "170"
    assert page.locator("#digits li").count() == 3
    page.screenshot(path=str(ARTIFACTS / "serve-page-multi.png"), full_page=True)


def test_a_touching_number_is_read_and_boxed(page):
    """"1007" with every neighbour touching (the 0s overlap): one piece of ink, read as four digits."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.check("#multi")
    stroke(page, [(0.148, 0.15), (0.143, 0.85)])
    stroke(page, ellipse(0.25, 0.5, 0.085, 0.34))
    stroke(page, ellipse(0.41, 0.5, 0.085, 0.34))
    stroke(page, [(0.49, 0.2), (0.64, 0.2), (0.55, 0.85)])
    got = answer(page)
    page.screenshot(path=str(ARTIFACTS / "serve-page-touching.png"), full_page=True)
    assert got == "1007"
    assert page.locator("#digits li.ok").count() == 4
    # The boxes are drawn on the overlay, never on the pad whose pixels are sent.
    assert page.locator("#boxes").evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 == 3 && v > 0)")


def test_a_correction_is_saved_from_the_page(browser, collecting_server, server):
    """"Wrong? It was a 7": the drawing and its label land in the store, and the page says so."""
    from mnist_cnn.samples import Store

    url, path = collecting_server
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url + "/")
    pg.locator("#model-info", has_text="Model:").wait_for()
    assert not pg.locator("#correct-box").is_visible()  # nothing on screen to correct yet
    assert draw(pg, ONE) == "1"
    assert pg.locator("#correct-box").is_visible()
    pg.click('.digit-buttons button[data-label="7"]')
    status = pg.locator("#correct-status", has_text="Saved as sample")
    status.wait_for(timeout=15_000)
    assert status.text_content() == "Saved as sample #1: a 7. The store holds 1 sample."
    assert pg.locator('.digit-buttons button[data-label="7"]').get_attribute("aria-pressed") == "true"
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "serve-page-correction.png"), full_page=True)
    with Store(path) as store:
        [sample] = store.rows()
    assert sample.label == 7 and sample.source == "page" and sample.predicted == 1
    pg.click("#clear")
    assert answer(pg) == "–" and not pg.locator("#correct-box").is_visible()
    context.close()
    assert not errors, errors
    plain = browser.new_page()  # a server that does not collect shows no correction buttons
    plain.goto(server + "/")
    plain.locator("#model-info", has_text="Model:").wait_for()
    draw(plain, ONE)
    assert not plain.locator("#correct-box").is_visible()
    plain.close()


def test_phone_layout(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    pg = context.new_page()
    pg.goto(server + "/")
    pad = pg.locator("#pad").bounding_box()
    assert pad["width"] <= 390 and pad["width"] >= 250  # fills a phone's width without overflowing
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"), full_page=True)
    pg.check("#multi")  # a number of ten digits needs the whole width (the panel left 324x130 px)
    pad = pg.locator("#pad").bounding_box()
    assert pad["width"] >= 385 and pad["height"] >= 190
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    pg.screenshot(path=str(ARTIFACTS / "serve-page-phone-multi.png"), full_page=True)
    context.close()


def test_api_docs_render_offline(browser, server):
    """Swagger UI at /docs draws every endpoint from files the package serves itself."""
    context = browser.new_context()
    pg = context.new_page()
    foreign = []
    pg.on("request", lambda r: r.url.startswith((server, "data:")) or foreign.append(r.url))
    pg.goto(server + "/docs")
    pg.locator(".opblock-summary-path", has_text="/api/predict/batch").wait_for()
    paths = set(pg.locator(".opblock-summary-path").all_inner_texts())
    assert {"/api/predict", "/api/predict/batch", "/api/model", "/healthz"} <= {p.strip() for p in paths}
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "serve-docs.png"))
    context.close()
    assert not foreign, foreign


def test_the_explain_panel_shows_where_the_network_looked(page):
    """Closed, the panel asks for nothing; opened after a 7, it draws the heat map over the 28x28 and a
    strip of feature maps per convolution, all from the page's own server."""
    explains = []
    page.on("request", lambda r: "/api/explain" in r.url and explains.append(r.url))
    assert draw(page, SEVEN) == "7"
    assert not explains  # collapsed: no explanation is computed
    page.locator("#explain summary").click()
    page.locator('#explain[data-drawn="true"]').wait_for(timeout=15_000)
    assert page.locator("#explain-sentence").text_content().lower().startswith(("surely 7", "mostly 7"))
    strips = page.locator("#explain-stages figure.stage")
    assert strips.count() == 3  # the shipped network's three convolutions
    assert page.locator("#explain-stages canvas").count() >= 3 * 4
    # The heat map is drawn: its pixels differ (a blank canvas is all transparent).
    shades = page.locator("#explain-heat").evaluate(
        "c => new Set(Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)).size")
    assert shades > 10
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-explain.png"), full_page=True)
