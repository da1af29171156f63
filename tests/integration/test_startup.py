"""Start-up (issue 14): a plain fetch imports nothing it does not use.

Each of these was measured as a slice of every pod start: botocore.auth with urllib3 and
cryptography (SigV4 is hand-written, fetcher/source/sigv4sign.py), cryptography for a trust
policy nobody configured, prometheus_client for metrics nobody exports. The fetch runs as a
subprocess against SeaweedFS with Python's own import log (PYTHONPROFILEIMPORTTIME).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import Result, metric, tree

BODY = bytes(range(256)) * 4  # 1 KiB, as the start-up row of make bench-files
HEAVY = ("botocore", "aiobotocore", "urllib3", "cryptography", "prometheus_client", "aiohttp")


def _imported(stderr: str) -> set[str]:
    """The top-level packages in the `-X importtime` lines of a run's stderr."""
    return {
        line.split("|")[2].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_plain_fetch_imports_no_heavy_package(
    fetch: Callable[..., Result], put: Callable[[str, bytes], None], dest: Path
) -> None:
    put("blob.bin", BODY)
    r = fetch(PYTHONPROFILEIMPORTTIME="1")
    assert r.code == 0, r.stderr[-2000:]
    assert tree(dest) == {"blob.bin": BODY}
    imported = _imported(r.stderr)
    assert "fetcher" in imported  # the import log is there: the check below can fail
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_exported_metrics_still_load_prometheus(
    fetch: Callable[..., Result], put: Callable[[str, bytes], None], tmp_path: Path
) -> None:
    """The null metrics are for runs that export none: a textfile gets the real values."""
    put("blob.bin", BODY)
    textfile = tmp_path / "fetcher.prom"
    r = fetch(PYTHONPROFILEIMPORTTIME="1", METRICS_TEXTFILE=str(textfile))
    assert r.code == 0, r.stderr[-2000:]
    assert "prometheus_client" in _imported(r.stderr)
    assert metric(textfile, "model_fetcher_files_total", result="downloaded") == 1
    assert metric(textfile, "model_fetcher_up") == 1
