"""The Scan page's quality line, for each state of the score and flag."""

from __future__ import annotations

import math

from src.viewer_app.scan import quality_text


def test_quality_text_says_what_the_score_and_flag_mean():
    assert "nothing measured" in quality_text(math.nan, None, "mm")
    assert "some views only" in quality_text(math.inf, True, "mm")
    flagged = quality_text(12.34, True, "mm")
    assert "12.3 mm" in flagged and "redo by hand" in flagged
    assert "not flagged" in quality_text(0.5, False, "px")
    assert "no calibrated threshold" in quality_text(0.5, None, "mm")
