"""The SDK's Mask: run-length decoding (rows, contains, area) on a table of small grids."""

from __future__ import annotations

import pytest
from visionrpc.client import Mask

CASES = [
    # counts, rows (3 wide, 2 high, top-left pixel (4, 5))
    ((0, 1, 3, 2), [[True, False, False], [False, True, True]]),
    ((2, 3, 1), [[False, False, True], [True, True, False]]),
    ((6,), [[False, False, False], [False, False, False]]),
    ((0, 6), [[True, True, True], [True, True, True]]),
]


@pytest.mark.parametrize(("counts", "rows"), CASES)
def test_mask_decodes_its_runs(counts: tuple[int, ...], rows: list[list[bool]]) -> None:
    mask = Mask(left=4, top=5, width=3, height=2, counts=counts)
    assert mask.rows() == rows
    assert mask.area == sum(v for row in rows for v in row)
    inside = {(4 + c, 5 + r): v for r, row in enumerate(rows) for c, v in enumerate(row)}
    for y in range(4, 8):
        for x in range(3, 8):
            assert mask.contains(x, y) is inside.get((x, y), False)
