"""Progress counts files committed, not only bytes received (issue 14)."""

from __future__ import annotations

import pytest

from fetcher.observe.progress import Progress


def test_all_bytes_in_but_files_left_is_not_100_percent_eta_0() -> None:
    progress = Progress(1000, 10, 5.0, bar=False)
    progress.started -= 10  # ten seconds in
    progress.add(1000)  # every byte received ...
    for i in range(5):  # ... half of the files verified and placed
        progress.file_done(f"f{i}", 100)
    assert progress.fraction() == pytest.approx(0.6)  # five placed, one between
    assert progress.snapshot()["eta_s"] == pytest.approx(10, rel=0.05)
    for i in range(5, 9):
        progress.file_done(f"f{i}", 100)
    assert progress.fraction() == pytest.approx(0.99)  # never 100 % while a file remains


def test_one_large_file_shows_its_bytes() -> None:
    progress = Progress(1000, 1, 5.0, bar=False)
    progress.add(500)
    assert progress.fraction() == pytest.approx(0.5)


def test_bytes_behind_files_is_the_bytes_fraction() -> None:
    progress = Progress(1000, 2, 5.0, bar=False)
    progress.file_done("small", 1)
    progress.add(100)
    assert progress.fraction() == pytest.approx(0.1)
