"""Ruled lines found in an ink mask (rules.py): drawn masks whose rule pixels are known."""

from __future__ import annotations

import cv2
import numpy as np

from mnist_cnn import rules

H, W = 600, 800


def _polyline(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, thickness: int) -> None:
    pts = np.stack([xs, ys], 1).round().astype(np.int32)
    cv2.polylines(mask, [pts], False, 1, thickness=thickness)


def _bent_rules(amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Five rules across an 800x600 mask, bent like a sheet that does not lie flat (one slow arc,
    `amplitude` px high), 2 px thick: (mask uint8, the rules' own pixels bool)."""
    mask = np.zeros((H, W), np.uint8)
    xs = np.arange(0, W, 4, dtype=np.float64)
    for y in (100, 200, 300, 400, 500):
        _polyline(mask, xs, y + amplitude * np.sin(np.pi * xs / W), 2)
    return mask, mask.astype(bool)


def test_bent_rules_are_found_whole():
    """A rule that bows by 10 px over the frame has no straight segment spanning 60% of it (the test
    of a straight rule); its pieces that continue one another make it one."""
    mask, truth = _bent_rules(10.0)
    across, down = rules.rule_lines(mask.astype(bool))
    assert not down.any()
    assert (across & truth).sum() >= 0.9 * truth.sum()


def test_a_line_through_a_row_of_digits_is_not_a_rule():
    """A number written across a strip of plain paper: a straight line through the digits' middles runs
    over ink most of its length and chains across the gaps, but only where it follows a bar (a 2's base,
    a 5's top) is it a thin line with paper on either side. Taken for a rule, it cut a 0 into a 3."""
    for text in ("03790107", "2233445566", "1905526202"):
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 4, 14)
        mask = np.zeros((h + 90, w + 40), np.uint8)
        cv2.putText(mask, text, (20, h + 45), cv2.FONT_HERSHEY_SIMPLEX, 4, 1, 14)
        across, down = rules.rule_lines(mask.astype(bool))
        assert not across.any() and not down.any(), text


def test_pen_strokes_are_not_rules():
    """A 1's long stroke and two digits' bars that line up along one writing line (a 7's bar, then
    a 3's top, 40 px apart) are each far shorter than a rule: none of their ink is taken."""
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (400, 150), (420, 420), 1, thickness=7)  # a 1, 45% of the frame's height
    cv2.line(mask, (100, 300), (260, 296), 1, thickness=5)  # a 7's bar...
    cv2.line(mask, (300, 295), (520, 290), 1, thickness=5)  # ...and a 3's top, on the same line
    across, down = rules.rule_lines(mask.astype(bool))
    assert not across.any() and not down.any()


def test_a_stroke_written_along_a_rule_is_cut_no_wider_than_the_rule():
    """A digit's thick base written along a 2-px rule (a 2 on lined paper): the rule goes, and of the
    pen's stroke only a band as wide as the rule's other pieces are (2 px and their skirts), not the
    whole stroke, which `remove_rules` could then no longer join again."""
    mask, truth = _bent_rules(0.0)
    pen = np.zeros_like(mask)
    cv2.line(pen, (300, 300), (460, 300), 1, thickness=15)
    across, _ = rules.rule_lines((mask | pen).astype(bool))
    assert (across & truth).sum() >= 0.9 * truth.sum()
    ys, _ = np.nonzero(across & pen.astype(bool))
    assert len(ys) and np.abs(ys - 300).max() <= 4


def test_a_rule_broken_by_a_shadow_is_found_past_the_break():
    """A hard shadow's edge leaves a rule a wide gap (60 px, three times what pieces may skip to
    continue one another): the piece past it is shorter than a rule, but lies on the found rule's
    line, so it is that rule too."""
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (0, 300), (420, 306), 1, 2)  # 420 px: spans a rule's 60% of the shorter side
    cv2.line(mask, (480, 307), (W - 1, 311), 1, 2)  # past the break: 320 px, too short alone
    across, _ = rules.rule_lines(mask.astype(bool))
    right = mask.astype(bool)
    right[:, :470] = False
    assert (across & right).sum() >= 0.9 * right.sum()


def test_a_thick_pen_stroke_past_a_break_is_not_taken_for_the_rule():
    """A 2's base written along a rule's line, where the digits hide the rule: past the break it is
    on the line, but five times the rule's thickness, so it is pen, not print, and none of it goes."""
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (0, 300), (420, 300), 1, 2)
    cv2.line(mask, (480, 300), (640, 300), 1, 10)  # the stroke
    across, _ = rules.rule_lines(mask.astype(bool))
    assert not across[:, 480:].any()


def test_a_faint_stroke_along_a_rule_stays_where_it_darkens_the_print():
    """A 6's base written along a rule in a pencil no darker than the print (strength 0.2 on a 0.2
    rule, as blurred and as wide): the rule goes, but where pen lies on print the two darken each
    other (1 - 0.8 * 0.8 = 0.36), so that stretch comes back and the 6's stem and loop stay one stroke."""
    rng = np.random.default_rng(0)
    mask, truth = _bent_rules(0.0)
    pen = np.zeros_like(mask)
    cv2.line(pen, (300, 150), (300, 300), 1, thickness=3)  # the stem, down to the rule...
    cv2.line(pen, (300, 300), (420, 300), 1, thickness=3)  # ...along it...
    cv2.line(pen, (420, 300), (420, 220), 1, thickness=3)  # ...and up into the loop's side
    strength = (1 - (1 - 0.2 * truth) * (1 - 0.2 * pen)).astype(np.float32)
    strength = np.clip(strength + rng.normal(0, 0.01, strength.shape), 0, 1).astype(np.float32)
    ink = strength > 0.1
    found = rules.rule_lines(ink)
    assert (found[0] & truth).sum() >= 0.9 * truth.sum()
    out = rules.remove_rules(ink, found, strength, level=0.2)
    n, labels = cv2.connectedComponents(out.astype(np.uint8))
    assert labels[200, 300] > 0 and labels[200, 300] == labels[240, 420]  # stem and loop: one stroke
    assert not out[100].any() and not out[300, 500:].any()  # no print is left anywhere else


def test_a_rule_is_chained_across_a_break_where_a_crossing_rule_interrupts_it():
    """A grid line on a curled sheet, found in two straight pieces 25 px apart at a slight angle (its
    break where another rule crosses it, faint): neither piece spans a rule alone, together they do."""
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (400, 0), (409, 280), 1, 2)
    cv2.line(mask, (410, 305), (395, H - 1), 1, 2)
    _, down = rules.rule_lines(mask.astype(bool))
    assert (down & mask.astype(bool)).sum() >= 0.9 * mask.sum()


def test_rows_of_dots_are_no_rule_where_a_stroke_runs_along_them():
    """Dotted paper (a dot every 30 px) with a 7's bar drawn along one row of dots: the row chains
    across its gaps, but is printed only where the pen is, so none of the bar is taken for a rule."""
    mask = np.zeros((H, W), np.uint8)
    for y in range(15, H, 30):
        for x in range(15, W, 30):
            cv2.circle(mask, (x, y), 2, 1, -1)
    cv2.line(mask, (300, 285), (480, 285), 1, thickness=5)
    across, down = rules.rule_lines(mask.astype(bool))
    assert not across[:, 300:480].any() and not down.any()


def test_the_tops_of_a_row_of_digits_in_a_strip_are_no_rule():
    """A number cut out on its own (a 900x150 strip): the tops of its digits line up, 40 px of ink
    then 30 px of paper. Measured against the strip's height they would span a rule; along the strip
    a rule runs at least half its length, and is inked from end to end."""
    mask = np.zeros((150, 900), np.uint8)
    for x in range(40, 860, 70):
        cv2.line(mask, (x, 40), (x + 40, 40), 1, thickness=5)
        cv2.line(mask, (x + 20, 40), (x + 20, 110), 1, thickness=5)  # the digit below its top
    across, down = rules.rule_lines(mask.astype(bool))
    assert not across.any() and not down.any()


def test_bold_strokes_along_a_line_in_a_strip_are_no_rule():
    """The bases of a long number in a bold pen (16 px, ten digits nearly touching) along one line
    of a 1200x280 strip: inked from end to end, but far thicker than print for a frame that size
    (the strip's length does not set how thick a rule may be)."""
    mask = np.zeros((280, 1200), np.uint8)
    for x in range(40, 1140, 110):
        cv2.line(mask, (x, 200), (x + 100, 200), 1, thickness=16)
        cv2.line(mask, (x + 50, 200), (x + 50, 60), 1, thickness=16)
    across, down = rules.rule_lines(mask.astype(bool))
    assert not across.any() and not down.any()


def test_grid_lines_that_fade_into_dots_are_rules():
    """Squared paper under poor light: its lines down run solid over 70% of the frame, then thin into a
    row of dots where lines across cross them (all that survives the threshold there). Measured from end
    to end they are inked along 76% of their length; over the stretch a rule must span, all of it."""
    mask = np.zeros((H, W), np.uint8)
    for x in range(100, W, 150):
        cv2.line(mask, (x, 0), (x, 420), 1, 2)
        for y in range(440, H, 25):
            cv2.circle(mask, (x, y), 2, 1, -1)
    solid = np.zeros((H, W), bool)
    solid[:421] = mask[:421].astype(bool)
    across, down = rules.rule_lines(mask.astype(bool))
    assert (down & solid).sum() >= 0.9 * solid.sum()
    assert not across.any()


def test_a_rule_that_leaves_the_frame_near_a_corner_is_a_rule():
    """A ruled sheet photographed at a tilt: its top rule enters the frame 240 px from the right edge and
    leaves it through that edge, shorter than a rule must span across the frame, but over all the frame
    holds of its line. Left in, its piece was read as a 1 before a number. A pen stroke as long, near the
    corner but short of the frame's edges, is still no rule."""
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (560, 0), (W - 1, 64), 1, 2)
    across, down = rules.rule_lines(mask.astype(bool))
    assert (across & mask.astype(bool)).sum() >= 0.9 * mask.sum()
    stroke = np.zeros((H, W), np.uint8)
    cv2.line(stroke, (650, 20), (770, 140), 1, 5)
    across, down = rules.rule_lines(stroke.astype(bool))
    assert not across.any() and not down.any()


def test_median_is_numpys():
    """The one-partition median of a rule piece's distances gives np.median's value exactly."""
    rng = np.random.default_rng(3)
    for values in ([0.3], [0.5, 0.25], [0.1, 0.7, 0.4], [1 / 3, 0.2, 0.2], rng.normal(size=101), rng.normal(size=64)):
        values = np.asarray(values, np.float64)
        assert rules._median(values) == float(np.median(values))
