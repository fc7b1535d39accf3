"""The phone-photo benchmark's scene (benchmarks/photo_scene.py): where its sheet lies about the writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def scene(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import photo_scene
    return photo_scene


@pytest.mark.parametrize("desk", ["yes", "no"])
def test_the_sheet_holds_the_whole_number_however_large(scene, desk):
    """A number of five digits 28 mm tall is wider than an A5 sheet. Its first digits were drawn on the desk
    beyond the sheet's edge, and the label still held them: a photo no reader could read right."""
    box = np.array([[-80.0, -14.0], [80.0, 14.0]])  # the ink, mm, centred on 0
    frame = np.array([[-150.0, -110.0], [150.0, -110.0], [150.0, 110.0], [-150.0, 110.0]])
    rng = np.random.default_rng(0)
    for _ in range(200):
        sheet = scene.place_sheet(rng, {"desk": desk}, frame, box)
        assert (sheet[0] <= box[0]).all() and (sheet[1] >= box[1]).all(), sheet
