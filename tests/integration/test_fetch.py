"""The fetch path end to end against a real SeaweedFS (issue 2)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.seaweed import SeaweedServer
from fetcher.cache.layout import Layout
from tests.faults.proxy import FaultProxy
from tests.helpers import BUCKET, Result, metric, tree

PART = 256 * 1024  # small parts make multi-part files cheap to test


def state(dest: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Layout(dest).state_path.read_text())
    return doc


def test_cold_fetch_sizes_are_byte_identical(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    sizes = {
        "zero": 0,
        "one": 1,
        "part-1": PART - 1,
        "part": PART,
        "part+1": PART + 1,
        "several": 3 * PART + 17,
    }
    files = {f"{name}.bin": os.urandom(n) for name, n in sizes.items()}
    for rel, data in files.items():
        put(rel, data)
    textfile = dest.parent / "metrics.prom"
    res = fetch(FETCH_PART_SIZE=str(PART), METRICS_TEXTFILE=str(textfile))
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    st = state(dest)
    assert st["complete"] is True
    assert {rel: f["size"] for rel, f in st["files"].items()} == sizes_by_file(files)
    assert not list(Layout(dest).partial_dir.iterdir())
    total = sum(sizes.values())
    assert f'model_fetcher_bytes_downloaded_total{{bucket="{BUCKET}"' in textfile.read_text()
    assert metric(textfile, "model_fetcher_bytes_downloaded_total") == total
    assert metric(textfile, "model_fetcher_bytes_expected") == total
    assert [e["event"] for e in res.events()][:1] == ["start"]
    assert res.events("done")[0]["files_fetched"] == len(files)


def sizes_by_file(files: dict[str, bytes]) -> dict[str, int]:
    return {rel: len(data) for rel, data in files.items()}


def test_nested_keys(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    files = {
        "1_Pooling/config.json": b'{"pooling": "mean"}',
        "a/b/c/d.txt": b"deep",
        "config.json": b"{}",
    }
    for rel, data in files.items():
        put(rel, data)
    res = fetch()
    assert res.code == 0, res.stderr
    assert tree(dest) == files


def test_keys_with_spaces_plus_signs_and_unicode(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    # The listing comes url-encoded: a space as "+", a "+" as %2B.
    files = {
        "tokenizer config.json": b"space",
        "a+b.json": b"plus",
        "dir with space/x y+z.bin": os.urandom(3000),
        "modèle/é.json": b"unicode",
        "100%.txt": b"percent",
    }
    for rel, data in files.items():
        put(rel, data)
    res = fetch(FETCH_PART_SIZE="64KiB")
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert fetch("verify", "--full").code == 0


def test_prefix_is_a_directory(
    s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    base = prefix.rstrip("/")  # ".../v1"
    s3.put_object(Bucket=BUCKET, Key=f"{base}/model.bin", Body=b"v1")
    s3.put_object(Bucket=BUCKET, Key=f"{base}0/model.bin", Body=b"v10")
    s3.put_object(Bucket=BUCKET, Key=f"{base}-old.bin", Body=b"sibling")
    res = fetch(MODEL_PREFIX=base)  # no trailing slash: still the directory v1/
    assert res.code == 0, res.stderr
    assert tree(dest) == {"model.bin": b"v1"}


def test_include_and_exclude(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    for rel in (
        "model.safetensors.bin",
        "config.json",
        "tokenizer.json",
        "original/x.pth",
        "README.md",
    ):
        # A config.json must parse as JSON (issue 16): give the .json files JSON bodies.
        put(rel, json.dumps({"name": rel}).encode() if rel.endswith(".json") else rel.encode())
    res = fetch(FETCH_INCLUDE="*.json,*.bin,*.pth", FETCH_EXCLUDE="original/*,tokenizer*")
    assert res.code == 0, res.stderr
    assert sorted(tree(dest)) == ["config.json", "model.safetensors.bin"]


def test_kserve_allow_patterns(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("a.json", b"a")
    put("b.bin", b"b")
    res = fetch(STORAGE_ALLOW_PATTERNS="*.json")
    assert res.code == 0, res.stderr
    assert tree(dest) == {"a.json": b"a"}


def test_warm_start_makes_one_list_and_no_get(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
) -> None:
    put("config.json", b"{}")
    put("weights.bin", os.urandom(3 * PART))
    first = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART))
    assert first.code == 0, first.stderr
    assert proxy.count("GET", path_contains=prefix) == 4  # 3 parts + config.json
    proxy.reset()
    second = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART))
    assert second.code == 0, second.stderr
    assert proxy.count("GET", path_contains=prefix) == 0
    assert proxy.count("HEAD") == 0
    assert len(proxy.requests) == 1  # the LIST
    assert second.events("done")[0]["files_kept"] == 2


def test_every_get_is_pinned_and_ranged(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
    prefix: str,
    s3: Any,
) -> None:
    put("weights.bin", os.urandom(2 * PART + 1))
    etag = s3.head_object(Bucket=BUCKET, Key=prefix + "weights.bin")["ETag"]
    res = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART))
    assert res.code == 0, res.stderr
    gets = [r for r in proxy.requests if r.method == "GET" and prefix in r.path]
    assert sorted(r.range or "" for r in gets) == [
        f"bytes=0-{PART - 1}",
        f"bytes={PART}-{2 * PART - 1}",
        f"bytes={2 * PART}-{2 * PART}",
    ]
    assert {r.if_match for r in gets} == {etag}


def test_changed_object_is_fetched_again(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    put("weights.bin", b"old" * 1000)
    assert fetch().code == 0
    put("weights.bin", b"new!" * 1000)
    res = fetch()
    assert res.code == 0, res.stderr
    assert (dest / "weights.bin").read_bytes() == b"new!" * 1000
    done = res.events("done")[0]
    assert (done["files_fetched"], done["files_kept"]) == (1, 1)


def test_stale_files_removed_and_foreign_files_kept(
    s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    root = prefix.rsplit("/", 2)[0]
    s3.put_object(Bucket=BUCKET, Key=f"{root}/v1/old-only.bin", Body=b"old")
    s3.put_object(Bucket=BUCKET, Key=f"{root}/v1/sub/old.bin", Body=b"old")
    s3.put_object(Bucket=BUCKET, Key=f"{root}/v1/shared.json", Body=b"v1")
    s3.put_object(Bucket=BUCKET, Key=f"{root}/v2/shared.json", Body=b"v2")
    s3.put_object(Bucket=BUCKET, Key=f"{root}/v2/new.bin", Body=b"new")
    assert fetch(MODEL_PREFIX=f"{root}/v1/").code == 0
    (dest / "notes.txt").write_text("mine")
    (dest / "sub" / "mine.txt").write_text("also mine")
    res = fetch(MODEL_PREFIX=f"{root}/v2/")
    assert res.code == 0, res.stderr
    assert tree(dest) == {
        "new.bin": b"new",
        "shared.json": b"v2",
        "notes.txt": b"mine",
        "sub/mine.txt": b"also mine",
    }
    assert res.events("done")[0]["files_removed"] == 2
    assert sorted(state(dest)["files"]) == ["new.bin", "shared.json"]


def test_exec_handoff_keeps_the_pid(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b'{"x": 1}')
    script = (
        "import os, sys; print('served', os.getpid(), os.getppid(), "
        "open(sys.argv[1] + '/config.json').read())"
    )
    res = fetch("--", "python3", "-c", script, str(dest), FETCH_PRINT_PID="1")
    assert res.code == 0, res.stderr
    handoff = res.events("handoff")[0]
    served = res.stdout.split()
    assert served[0] == "served" and served[3] == '{"x":'
    assert int(served[1]) == handoff["pid"]  # exec'd in place: same PID as the fetcher


def test_exec_handoff_restores_the_signals_python_ignores(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result]
) -> None:
    put("config.json", b"{}")
    res = fetch("--", "sh", "-c", "grep SigIgn /proc/self/status")
    assert res.code == 0, res.stderr
    ignored = int(res.stdout.split()[1], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), f"{signum.name} still ignored"


def test_failed_fetch_does_not_run_the_command(fetch: Callable[..., Result], dest: Path) -> None:
    res = fetch("--", "python3", "-c", "print('SHOULD NOT RUN')")  # empty prefix: exit 3
    assert res.code == 3
    assert "SHOULD NOT RUN" not in res.stdout


def test_kserve_positional_form(
    s3_server: SeaweedServer, put: Callable[[str, bytes], None], prefix: str, tmp_path: Path
) -> None:
    from tests.helpers import run_fetcher

    put("config.json", b"{}")
    put("model.bin", b"weights")
    host = s3_server.endpoint.removeprefix("http://")
    env = {
        "S3_ENDPOINT": host,
        "S3_USE_HTTPS": "0",
        "S3_VERIFY_SSL": "0",
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    res = run_fetcher([f"s3://{BUCKET}/{prefix}", str(tmp_path / "mnt" / "models")], env)
    assert res.code == 0, res.stderr
    assert tree(tmp_path / "mnt" / "models") == {"config.json": b"{}", "model.bin": b"weights"}
    env2 = {**env, "AWS_ENDPOINT_URL": s3_server.endpoint}
    del env2["S3_ENDPOINT"]
    res = run_fetcher([f"s3://{BUCKET}/{prefix}", str(tmp_path / "other")], env2)
    assert res.code == 0, res.stderr


def test_configuration_errors_are_listed_together(fetch: Callable[..., Result], dest: Path) -> None:
    res = fetch(
        FETCH_CONCURRENCY="lots", FETCH_PART_SIZE="huge", MINIO_BUCKET="", MINIO_ENDPOINT="ftp://x"
    )
    assert res.code == 2
    for needle in ("FETCH_CONCURRENCY", "FETCH_PART_SIZE", "bucket", "ftp"):
        assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    assert "configuration error" in (dest.parent / "termination-log").read_text()


def test_wrong_secret_exits_3_without_printing_it(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    secret = "WrongSecret-do-not-print-9f8e7d"
    res = fetch(MINIO_SECRET_KEY=secret)
    assert res.code == 3, res.stderr
    assert "access denied" in res.stderr.lower()
    termination = (dest.parent / "termination-log").read_text()
    for text in (res.stderr, res.stdout, termination):
        assert secret not in text
    assert "Traceback" not in res.stderr
    assert not (dest / "config.json").exists()


def test_missing_prefix_exits_3(fetch: Callable[..., Result], dest: Path) -> None:
    res = fetch(MODEL_PREFIX="no-such-model/v9/")
    assert res.code == 3
    assert "no-such-model/v9/" in res.stderr
    assert "nothing under" in (dest.parent / "termination-log").read_text()


def test_missing_bucket_exits_3(fetch: Callable[..., Result]) -> None:
    res = fetch(MINIO_BUCKET="no-such-bucket")
    assert res.code == 3
    assert "no-such-bucket" in res.stderr


def test_botocore_credential_chain_without_keys(
    s3_server: SeaweedServer,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    tmp_path: Path,
) -> None:
    """No keys in the environment: botocore's chain (here a shared credentials file, in a pod
    IRSA / web identity) signs, through the aiobotocore control plane."""
    put("config.json", b"{}")
    put("weights.bin", os.urandom(3 * PART))
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    res = fetch(
        MINIO_ACCESS_KEY="",
        MINIO_SECRET_KEY="",
        AWS_SHARED_CREDENTIALS_FILE=str(creds),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        FETCH_PART_SIZE=str(PART),
    )
    assert res.code == 0, res.stderr
    assert len(tree(dest)) == 2
    wrong = tmp_path / "wrong"
    wrong.write_text(
        f"[default]\naws_access_key_id = {s3_server.access_key}\n"
        "aws_secret_access_key = not-the-secret-7c1\n"
    )
    res = fetch(
        MINIO_ACCESS_KEY="",
        MINIO_SECRET_KEY="",
        AWS_SHARED_CREDENTIALS_FILE=str(wrong),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        MODEL_CACHE_DIR=str(tmp_path / "other"),
    )
    assert res.code == 3
    assert "not-the-secret-7c1" not in res.stderr
