"""The test Pushgateway keeps nothing between runs (issue 13, item 17)."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration import promstack


def test_a_new_pushgateway_holds_no_group_of_an_earlier_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bins = promstack.ensure_installed()
    job = f"leak-{uuid.uuid4().hex[:8]}"
    first = promstack.start_pushgateway(bins, tmp_path_factory.mktemp("pg1"))
    try:
        body = b"# TYPE leak_probe gauge\nleak_probe 1\n"
        req = urllib.request.Request(f"{first.url}/metrics/job/{job}", data=body, method="PUT")
        urllib.request.urlopen(req, timeout=5).close()
        assert job in first.get("/metrics").decode()
    finally:
        first.stop()  # SIGTERM: a gateway with a persistence file writes it now
    second = promstack.start_pushgateway(bins, Path(tmp_path_factory.mktemp("pg2")))
    try:
        assert job not in second.get("/metrics").decode()
    finally:
        second.stop()
