"""GGUF, JSON and weight-map checks end to end against a real SeaweedFS (issue 16).

`publish` refuses before anything is uploaded; `fetch` refuses before the bad file gets its
final name (a split missing from the bucket: before any download); `verify` finds a file
damaged in the cache. FETCH_SKIP_FORMAT_CHECKS lets a family through, with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest

from devtools.sample_gguf import write_gguf
from devtools.seaweed import SeaweedServer
from tests.helpers import BUCKET, Result, pod_env, run_fetcher, tree

HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"
SPLITS = [f"llama-3-8b.Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama.cpp model: a split set of three, a single-file quant, and its config files."""
    root = tmp_path_factory.mktemp("gguf") / "model"
    written = write_gguf(root / "llama-3-8b.Q4_K_M.gguf", rows=64, split_max_tensors=2)
    assert sorted(p.name for p in written) == SPLITS
    write_gguf(root / "q8" / "llama-3-8b.Q8_0.gguf", rows=32, types=["Q8_0"], seed=2)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def publish(server: SeaweedServer, local: Path, prefix: str, **env: str) -> Result:
    base = pod_env(server, prefix, local.parent / "unused-dest")
    for name in ("MODEL_PREFIX", "MINIO_BUCKET"):
        base.pop(name)
    return run_fetcher(["publish", str(local), f"s3://{BUCKET}/{prefix}"], {**base, **env})


def listed(s3: Any, prefix: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in found)


def damaged_copy(model: Path, tmp_path: Path, rel: str, how: str) -> Path:
    local = tmp_path / "model"
    shutil.copytree(model, local)
    path = local / rel
    if how == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    elif how == "html":
        path.write_bytes(HTML)
    elif how == "delete":
        path.unlink()
    return local


def model_files_in(dest: Path) -> dict[str, bytes]:
    return tree(dest) if dest.exists() else {}


# --- publish ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "how", "words"),
    [
        (SPLITS[1], "truncate", ("truncated",)),
        ("q8/llama-3-8b.Q8_0.gguf", "html", ("not a GGUF file", "HTML")),
        (SPLITS[2], "delete", (f"missing {SPLITS[2]}",)),
        ("config.json", "html", ("config.json: not valid UTF-8 JSON", "HTML")),
    ],
    ids=["truncated-split", "html-gguf", "missing-split", "html-config"],
)
def test_publish_refuses_before_uploading_anything(
    s3: Any,
    s3_server: SeaweedServer,
    gguf_model: Path,
    prefix: str,
    tmp_path: Path,
    rel: str,
    how: str,
    words: tuple[str, ...],
) -> None:
    local = damaged_copy(gguf_model, tmp_path, rel, how)
    res = publish(s3_server, local, prefix)
    assert res.code == 4, res.stderr
    (error,) = res.events("error")
    for word in words:
        assert word in error["msg"], error
    assert listed(s3, prefix) == []


def test_publish_with_the_family_skipped_uploads_and_says_so(
    s3: Any, s3_server: SeaweedServer, gguf_model: Path, prefix: str, tmp_path: Path
) -> None:
    local = damaged_copy(gguf_model, tmp_path, "q8/llama-3-8b.Q8_0.gguf", "html")
    res = publish(s3_server, local, prefix, FETCH_SKIP_FORMAT_CHECKS="gguf")
    assert res.code == 0, res.stderr
    (note,) = res.events("format_checks_skipped")
    assert note["level"] == "warning" and note["msg"].endswith(": gguf")
    assert "q8/llama-3-8b.Q8_0.gguf" in listed(s3, prefix)


# --- fetch and verify ------------------------------------------------------------------------


@pytest.fixture
def put_model(put: Callable[[str, bytes], None]) -> Callable[[dict[str, bytes]], None]:
    def put_all(files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            put(rel, data)

    return put_all


def state(dest: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((dest / ".fetcher" / "state.json").read_text())
    return doc


def test_gguf_model_is_fetched_and_verified(
    gguf_model: Path,
    put_model: Callable[[dict[str, bytes]], None],
    fetch: Callable[..., Result],
    dest: Path,
) -> None:
    files = files_of(gguf_model)
    put_model(files)
    res = fetch()
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    for rel in files:
        if rel.endswith(".gguf"):
            assert gguf.GGUFReader(dest / rel).tensors  # what llama.cpp's tools would read
    assert fetch("verify", "--full").code == 0


@pytest.mark.parametrize(
    ("rel", "how", "words"),
    [
        (SPLITS[0], "truncate", ("truncated",)),
        ("q8/llama-3-8b.Q8_0.gguf", "html", ("not a GGUF file",)),
        ("config.json", "html", ("config.json", "HTML")),
    ],
    ids=["truncated-split", "html-gguf", "html-config"],
)
def test_fetch_refuses_a_bad_file_before_its_final_name(
    gguf_model: Path,
    put_model: Callable[[dict[str, bytes]], None],
    fetch: Callable[..., Result],
    dest: Path,
    rel: str,
    how: str,
    words: tuple[str, ...],
) -> None:
    files = files_of(gguf_model)
    files[rel] = HTML if how == "html" else files[rel][: len(files[rel]) // 2]
    put_model(files)
    res = fetch()
    assert res.code == 4, res.stderr
    (error,) = res.events("error")
    assert rel in error["msg"] and all(w in error["msg"] for w in words), error
    assert rel not in model_files_in(dest)
    assert state(dest)["complete"] is False
    checked = fetch("verify")
    assert checked.code == 4


def test_fetch_refuses_an_incomplete_split_set_before_any_download(
    gguf_model: Path,
    put_model: Callable[[dict[str, bytes]], None],
    fetch: Callable[..., Result],
    dest: Path,
) -> None:
    files = files_of(gguf_model)
    del files[SPLITS[1]]
    put_model(files)
    res = fetch()
    assert res.code == 4, res.stderr
    (error,) = res.events("error")
    assert f"split set of 3 is missing {SPLITS[1]}" in error["msg"]
    assert model_files_in(dest) == {}
    assert not res.events("start") and not res.events("file_done")  # refused at the listing


def test_fetch_refuses_a_pytorch_index_naming_a_missing_shard(
    put_model: Callable[[dict[str, bytes]], None], fetch: Callable[..., Result], dest: Path
) -> None:
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    put_model(
        {
            "config.json": b'{"model_type": "gpt2"}',
            "pytorch_model.bin.index.json": json.dumps({"weight_map": weight_map}).encode(),
            "pytorch_model-00001-of-00002.bin": b"PK\x03\x04 pickle stand-in",
        }
    )
    res = fetch()
    assert res.code == 4, res.stderr
    assert "names shard pytorch_model-00002-of-00002.bin which is missing" in res.stderr
    assert state(dest)["complete"] is False
    assert fetch(FETCH_SKIP_FORMAT_CHECKS="index").code == 0


def test_fetch_with_gguf_checks_skipped_serves_what_it_cannot_check(
    gguf_model: Path,
    put_model: Callable[[dict[str, bytes]], None],
    fetch: Callable[..., Result],
    dest: Path,
) -> None:
    files = files_of(gguf_model)
    files["q8/llama-3-8b.Q8_0.gguf"] = HTML
    put_model(files)
    res = fetch(FETCH_SKIP_FORMAT_CHECKS="gguf")
    assert res.code == 0, res.stderr
    assert res.events("format_checks_skipped")
    assert tree(dest) == files
    assert fetch("verify", FETCH_SKIP_FORMAT_CHECKS="gguf").code == 0
    checked = fetch("verify")
    assert checked.code == 4
    assert any("not a GGUF file" in p for p in json.loads(checked.stdout)["problems"])


def test_verify_finds_a_gguf_header_damaged_in_the_cache(
    gguf_model: Path,
    put_model: Callable[[dict[str, bytes]], None],
    fetch: Callable[..., Result],
    dest: Path,
) -> None:
    put_model(files_of(gguf_model))
    assert fetch().code == 0
    path = dest / SPLITS[2]
    st = path.stat()
    with open(path, "r+b") as fh:  # same size, same mtime: only the header check can tell
        fh.write(HTML[:16])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = fetch("verify")
    assert res.code == 4
    problems = json.loads(res.stdout)["problems"]
    assert any(p.startswith(f"{SPLITS[2]}: not a GGUF file") for p in problems), problems
