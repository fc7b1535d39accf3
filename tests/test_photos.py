"""Phone photos of handwritten digits on paper, committed with their labels (tests/data/photos/).

They were made by benchmarks/photo_synth.py (`--write-fixtures`) and cover plain, lined and squared
paper, blue and black ballpoint and pencil, shadows, the desk around the sheet, tilt, blur and
JPEG. The oracle is the label written on each; an answer may be "unsure", never confidently wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_cnn import images
from mnist_cnn.predict import Predictor

PHOTOS = Path(__file__).parent / "data" / "photos"
LABELS = json.loads((PHOTOS / "labels.json").read_text())
pytestmark = pytest.mark.slow  # reading the photos takes seconds


@pytest.fixture(scope="module")
def answers():
    predictor = Predictor.from_path()
    out = {}
    for name, item in LABELS.items():
        img = images.open_image(PHOTOS / name)
        if item["kind"] == "digit":
            p = predictor.predict_image(img)
            out[name] = ("" if p.digit is None else str(p.digit), p.status, p.probability)
        else:
            n = predictor.predict_number(img)
            out[name] = (n.text, n.status, min((d.probability for d in n.digits), default=0.0))
    return out


def test_the_set_covers_every_condition():
    conditions = [item["conditions"] for item in LABELS.values()]
    for key, values in {"paper": {"plain", "lined", "squared"}, "ink": {"blue", "black", "pencil"},
                        "desk_shown": {"yes", "no"}}.items():
        assert {c[key] for c in conditions} >= values
    assert any("shadow" in c["light"] for c in conditions)
    assert sum(item["kind"] == "number" for item in LABELS.values()) >= 5


def test_photos_are_read_and_never_confidently_wrong(answers):
    wrong = {n: a for n, a in answers.items() if a[1] == "ok" and a[0] != LABELS[n]["label"]}
    confident = {n: a for n, a in wrong.items() if a[2] >= 0.9}
    right = sum(a[1] == "ok" and a[0] == LABELS[n]["label"] for n, a in answers.items())
    assert not confident, confident
    # 27 of the first 30 were read when the set was made, 28 once bent rules were found. Three more
    # (photo_30-32: hard shadows that break a rule or look like desk) were added when they were
    # read, so 31 of the 33. Four more (photo_33-36: a curled grid, yellow paper on wood, a 6's base
    # along a rule, grid leftovers in a shadow) were added when they were read, and all 37 were.
    # photo_37 (a faint pencil 2 on a flattened sheet whose edge kept a sliver of shadow, which set
    # the ink's level) was added when it was read, and photo_38-39 (below) too: 39 of the 40. The
    # classifier retrained with the handwriting fonts (chosen on dev photos, where it read 102 of 120
    # numbers against 98) reads photo_17's 8, a UCI writer's that is half a 6 (8 at 0.58 before), as
    # 6 at 0.51: 38. photo_40, a narrow pencil 8 (the Kristi font) read as 1 at 0.96, was added when
    # a loop in the ink came to rule out a 1: it is unsure, not read, so still 38. Once the loops of the ink
    # stayed open at 28x28 it was read, 8 at 0.96: 39. photo_41-43 (below) were added when they were read:
    # 42 of the 44. photo_44-45 (below) were added when they were read: 44 of the 46. More misses are a regression.
    assert right >= 44, {n: a for n, a in answers.items() if a[0] != LABELS[n]["label"]}


def test_a_faint_digit_is_not_outweighed_by_a_sliver_along_the_sheets_edge(answers):
    """photo_37: a pencil 2 on a flattened sheet whose top edge kept a band of shadow. That band,
    the strongest "ink", set the level, and the 2 fell below it but for a piece of its base: unsure."""
    assert answers["photo_37.jpg"][:2] == ("2", "ok")


def test_a_grid_line_from_the_frames_edge_and_a_wedge_of_shadow_are_not_the_digit(answers):
    """photo_38: a 2 on squared paper, a grid line that the rule finder missed running from the frame's
    edge past it; joined to the 2 it made the crop the whole sheet, read as 3 at 99%. photo_39: a 1 in a
    fine pen beside a hard shadow's wedge of six times its pixels, which was taken for the digit, a 7 at 97%."""
    assert answers["photo_38.jpg"][:2] == ("2", "ok")
    assert answers["photo_39.jpg"][:2] == ("1", "ok")


def test_rules_that_fade_out_or_leave_the_frame_and_a_narrow_8_are_read(answers):
    """photo_41: "59109" in pencil on squared paper, the desk showing: the grid's lines down thin into dots
    at their crossings in the poorer light, were inked along 71-80% of their length from end to end, not
    found, and joined the number as eight 1s ("11111641"). photo_42: "79167" on a tilted grid, whose
    outermost rules leave the frame near its corners, too short for a rule across the frame: a piece of
    one was read as a leading 1. photo_43: "898" in Kristi's narrow 8s, whose loops the thickening to
    MNIST's stroke filled in: the last 8 was a blob, read as 1 at 1.000."""
    assert answers["photo_41.jpg"][:2] == ("59109", "ok")
    assert answers["photo_42.jpg"][:2] == ("79167", "ok")
    assert answers["photo_43.jpg"][:2] == ("898", "ok")


def test_a_wide_digit_that_both_readers_read_as_one_is_not_unsure(answers):
    """photo_44: "452", its 2's base long; photo_45: "98308", its last 0 and 8 slanted and wide. Each such piece
    is as wide as two of the number's digits, and the sequence reader found one digit in it: the count was in
    doubt and the number unsure ("45?", "983??"), though the reader and the classifier both read that one digit
    at >= 0.98. Their agreement now settles the count."""
    assert answers["photo_44.jpg"][:2] == ("452", "ok")
    assert answers["photo_45.jpg"][:2] == ("98308", "ok")


def test_faint_rules_beside_a_bold_digit_are_taken_out():
    """A pencil 0 on lined paper whose rules are faint beside it, from benchmarks/photo_crosscheck.py (the
    generator written apart from the benchmark's). Rules were looked for only in ink an eighth as strong as
    the strongest; these reached that mask as dashes, were not found, joined the 0 and made it "too wide"."""
    answer = Predictor.from_path().predict_image(images.open_image(PHOTOS.parent / "faint_rules_0.jpg"))
    assert (answer.status, answer.digit) == ("ok", 0)
