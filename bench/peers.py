"""Python peers for the benchmark, each run by the harness as its own measured process.

    python -m bench.peers {boto3,kserve} --endpoint URL --bucket B --prefix P --dest DIR

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as for any boto3 program.
- `boto3`: `download_file` per object, one object at a time, `TransferConfig(max_concurrency=10)`
  (boto3's ranged, threaded transfer manager).
- `kserve`: one object at a time, a single `get_object` whose body is streamed to disk, which is
  how a storage initializer built on plain boto3 calls behaves.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

_COPY_BUFFER = 1 << 20


def _client(endpoint: str) -> Any:
    config = Config(s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


def _keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield str(obj["Key"])


def _target(dest: Path, prefix: str, key: str) -> Path:
    path = dest / key[len(prefix) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _download_file(client: Any, bucket: str, key: str, path: Path) -> None:
    client.download_file(bucket, key, str(path), Config=TransferConfig(max_concurrency=10))


def _get_object(client: Any, bucket: str, key: str, path: Path) -> None:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with path.open("wb") as out:
        shutil.copyfileobj(body, out, _COPY_BUFFER)


_MODES = {"boto3": _download_file, "kserve": _get_object}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("mode", choices=sorted(_MODES))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args(argv)
    client, fetch = _client(args.endpoint), _MODES[args.mode]
    for key in _keys(client, args.bucket, args.prefix):
        fetch(client, args.bucket, key, _target(args.dest, args.prefix, key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
