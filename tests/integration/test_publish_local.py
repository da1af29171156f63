"""`publish` refuses a LOCAL_DIR it cannot read whole, before anything is uploaded.

Permissions do not bind root, so when the suite runs as root the publisher runs as nobody.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.seaweed import SeaweedServer
from tests.helpers import BUCKET, Result, pod_env

NOBODY = 65534
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b'{"version": "1.0"}',
    "extra/generation_config.json": b"{}",
}


@pytest.fixture
def local() -> Iterator[Path]:
    """A model directory that nobody can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="publish-"))
    base.chmod(0o777)
    model = base / "model"
    for rel, data in FILES.items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_bytes(data)
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield model
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755)  # so that rmtree may enter every folder
    shutil.rmtree(base)


def publish(server: SeaweedServer, prefix: str, model: Path) -> Result:
    as_nobody: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {
        **pod_env(server, prefix, model),
        "FETCH_TERMINATION_LOG": str(model.parent / "termination-log"),
        "PATH": os.environ["PATH"],
        "HOME": "/tmp",
    }
    args = ["publish", str(model), f"s3://{BUCKET}/{prefix}"]
    proc = subprocess.run(
        [*as_nobody, sys.executable, "-m", "fetcher", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def keys(s3: Any, prefix: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in found)


def test_a_readable_model_is_published_with_its_subfolders(
    s3_server: SeaweedServer, s3: Any, prefix: str, local: Path
) -> None:
    res = publish(s3_server, prefix, local)
    assert res.code == 0, res.stderr
    assert keys(s3, prefix) == sorted([*FILES, ".model-manifest.json"])
    for rel, data in FILES.items():
        assert s3.get_object(Bucket=BUCKET, Key=prefix + rel)["Body"].read() == data


@pytest.mark.parametrize(
    ("unreadable", "action"),
    [("extra", "list"), ("tokenizer.json", "read"), ("", "list")],
    ids=["subfolder", "file", "local-dir"],
)
def test_an_unreadable_part_of_local_dir_stops_publish_before_any_upload(
    s3_server: SeaweedServer, s3: Any, prefix: str, local: Path, unreadable: str, action: str
) -> None:
    (local / unreadable).chmod(0o000)
    res = publish(s3_server, prefix, local)
    assert res.code == 5, res.stderr
    path = str(local / unreadable) if unreadable else str(local)
    message = f"cache error: cannot {action} {path}: Permission denied"
    [error] = res.events("error")
    assert error["msg"].startswith(message) and "make LOCAL_DIR readable" in error["msg"]
    assert (local.parent / "termination-log").read_text().startswith(message)
    assert "Traceback" not in res.stderr
    assert keys(s3, prefix) == []
