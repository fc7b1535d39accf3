"""One request cannot hold the server: a written number has a bounded count of digits, and its work a deadline."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image, ImageDraw

from mnist_cnn import preprocess, segment, serve
from mnist_cnn.cli import main
from mnist_cnn.predict import Predictor
from test_serve import TestClient


def bar_png(width: int, height: int) -> bytes:
    """A black bar on white paper: read as a number, it is many touching digits (a costly cut)."""
    img = Image.new("L", (width + 40, height + 40), 255)
    ImageDraw.Draw(img).rectangle([20, 20, 20 + width - 1, 20 + height - 1], fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_path(None)


def test_too_many_digits_gets_422_and_a_one_line_cli_error(predictor, tmp_path, capsys):
    """A 1000x10 bar read as a number was 118 digits and took 209 s; now it is refused at once."""
    raw = bar_png(1000, 10)
    with _client(predictor) as c:
        t0 = time.monotonic()
        r = c.post("/api/predict?multi=true", content=raw, headers={"content-type": "image/png"})
    assert r.status_code == 422 and f"more than {segment.MAX_DIGITS} digits" in r.json()["detail"]
    assert time.monotonic() - t0 < 5
    (tmp_path / "bar.png").write_bytes(raw)
    assert main(["predict", str(tmp_path / "bar.png"), "--multi"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{tmp_path / 'bar.png'}: error: more than {segment.MAX_DIGITS} digits") and len(err) == 2


def _client(predictor, **limits):
    return TestClient(serve.create_app(predictor, limits=serve.Limits(**limits)))


def test_predict_number_stops_at_its_deadline(predictor):
    img = preprocess.decode(bar_png(600, 30))  # about 23 touching digits: many seconds of cutting
    t0 = time.monotonic()
    with pytest.raises(segment.OutOfTime):
        predictor.predict_number(img, deadline=time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 1.5
