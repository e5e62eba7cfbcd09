"""Comparing two sets of detections within the conformance tolerances, for the tests of reduced-size JPEG
decoding (tests/server/processing/test_reduced_jpeg.py through the predictor, tests/server/servicers/
test_infer_reduced_jpeg.py through a real server): the same photos, upscaled, decoded in full and reduced."""

from __future__ import annotations

__all__ = ["BOX_TOLERANCE", "COMPARED", "CONFIDENCE_TOLERANCE", "UPSCALE", "Found", "unmatched"]

UPSCALE = 4
BOX_TOLERANCE = 12.0  # px at the photo's own size, as the conformance cases state it
CONFIDENCE_TOLERANCE = 0.1
COMPARED = 0.3  # detections at least this confident must have a counterpart

Found = list[tuple[str, float, list[float]]]  # (class name, confidence, box at the photo's own size)


def unmatched(these: Found, others: Found) -> Found:
    """The detections of `these` (at least COMPARED confident) that nothing in `others` matches: same class,
    confidence within CONFIDENCE_TOLERANCE, every box side within BOX_TOLERANCE."""
    return [
        (name, confidence, box)
        for name, confidence, box in these
        if confidence >= COMPARED
        and not any(
            other_name == name
            and abs(other_confidence - confidence) <= CONFIDENCE_TOLERANCE
            and max(abs(a - b) for a, b in zip(box, other_box, strict=True)) <= BOX_TOLERANCE
            for other_name, other_confidence, other_box in others
        )
    ]
