"""Against moto's standalone server, a second S3 dialect (issue 13, item 2)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from tests.dialects.motoserver import ACCESS_KEY, SECRET_KEY, MotoServer, moto_server
from tests.helpers import Result, run_fetcher, tree

BUCKET = "llm-models"
MiB = 1 << 20


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def fetch_from(server: MotoServer, prefix: str, dest: Path, *args: str, **env: str) -> Result:
    return run_fetcher(
        list(args),
        {
            "MINIO_ENDPOINT": server.endpoint,
            "MINIO_BUCKET": BUCKET,
            "MODEL_PREFIX": prefix,
            "MODEL_CACHE_DIR": str(dest),
            "MINIO_ACCESS_KEY": ACCESS_KEY,
            "MINIO_SECRET_KEY": SECRET_KEY,
            "LOG_FORMAT": "json",
            "FETCH_TERMINATION_LOG": str(dest.parent / "termination-log"),
            "FETCH_PART_SIZE": "1MiB",
            **env,
        },
    )


def upload_like_a_user(s3: Any, local: Path, key: str) -> None:
    """boto3's defaults (CRC32 on every upload), multipart above 5 MiB."""
    s3.upload_file(str(local), BUCKET, key, Config=TransferConfig(multipart_threshold=5 * MiB))


def test_a_composite_checksum_without_a_type_is_unverified_not_refused(
    moto: MotoServer, tmp_path: Path
) -> None:
    s3 = moto.client()
    local = tmp_path / "local"
    local.mkdir()
    files = {"config.json": b'{"a": 1}', "model.safetensors.bin": os.urandom(12 * MiB + 17)}
    for rel, data in files.items():
        (local / rel).write_bytes(data)
        upload_like_a_user(s3, local / rel, "m1/v1/" + rel)
    head = s3.head_object(Bucket=BUCKET, Key="m1/v1/model.safetensors.bin", ChecksumMode="ENABLED")
    # The dialect: a multipart ETag, a CRC32 with no "-N" and no type.
    assert head["ETag"].strip('"').endswith("-2") and "ChecksumType" not in head
    assert "-" not in head["ChecksumCRC32"]
    dest = tmp_path / "cache"
    for plane in ({}, {"MINIO_ACCESS_KEY": "", "MINIO_SECRET_KEY": "", **chain(tmp_path)}):
        res = fetch_from(moto, "m1/v1/", dest, **plane)
        assert res.code == 0, res.stderr
        assert tree(dest) == files
        (warning,) = res.events("source_unverified")
        assert warning["examples"] == ["model.safetensors.bin"]  # config.json: CRC32 checked
        for path in dest.iterdir():
            if path.is_file():
                path.unlink()
        (dest / ".fetcher" / "state.json").unlink()


def chain(tmp_path: Path) -> dict[str, str]:
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    return {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(tmp_path / "no")}
