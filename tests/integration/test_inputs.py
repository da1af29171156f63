"""What a new user types, against a real SeaweedFS (issue 13): odd keys and prefixes, empty
selections, typos, one-object URIs, refused keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer
from tests.faults.proxy import DropHeader, FaultProxy, RewriteBody
from tests.helpers import BUCKET, Result, chain_env, pod_env, run_fetcher, tree

PART = 64 * 1024
# Every character S3 allows that a URL or a form encoding treats specially.
ODD = "my model+a%b#c?d&e=f/é ü/"


@pytest.mark.parametrize("plane", ["keys", "chain"])
def test_prefix_with_every_odd_character_lists_heads_and_gets(
    plane: str,
    s3_server: SeaweedServer,
    s3: Any,
    fetch: Callable[..., Result],
    dest: Path,
    tmp_path: Path,
) -> None:
    """Item 1: a space in the query was form-encoded ("+"), so the signature did not match."""
    prefix = f"pfx-{uuid.uuid4().hex[:8]}/{ODD}v1/"
    files = {"config.json": b"{}", "a+b =&?#.bin": os.urandom(3 * PART + 5)}
    for rel, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data, ChecksumAlgorithm="SHA256")
    env = chain_env(s3_server, tmp_path) if plane == "chain" else {}
    res = fetch(MODEL_PREFIX=prefix, FETCH_PART_SIZE=str(PART), **env)
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert not res.events("source_unverified")  # the HEAD for checksums answered too


def test_odd_prefix_with_a_manifest(
    s3_server: SeaweedServer, fetch: Callable[..., Result], dest: Path, tmp_path: Path
) -> None:
    """Item 1: publish to such a prefix, then the manifest GET and the ranged GETs."""
    local = tmp_path / "local"
    local.mkdir()
    files = {"config.json": b"{}", "w 1+2.bin": os.urandom(2 * PART + 1)}
    for rel, data in files.items():
        (local / rel).write_bytes(data)
    prefix = f"pub-{uuid.uuid4().hex[:8]}/{ODD}v1/"
    env = pod_env(s3_server, prefix, tmp_path / "unused")
    res = run_fetcher(
        ["publish", str(local), f"s3://{BUCKET}/{prefix}"], {**env, "FETCH_PART_SIZE": str(PART)}
    )
    assert res.code == 0, res.stderr
    res = fetch(MODEL_PREFIX=prefix)
    assert res.code == 0, res.stderr
    assert tree(dest) == files


# --- item 8: the prefix ------------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["", "/"])
def test_an_empty_prefix_fetches_nothing_without_fetch_whole_bucket(
    empty: str, put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")  # the bucket holds other tests' models too: never all of them
    res = fetch(MODEL_PREFIX=empty)
    assert res.code == 2, res.stderr
    assert "FETCH_WHOLE_BUCKET=true" in res.stderr
    assert not dest.exists()


def test_a_manifest_below_the_prefix_means_the_prefix_is_one_level_too_high(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path, prefix: str
) -> None:
    for version in ("v1", "v2"):
        put(f"{version}/.model-manifest.json", b"{}")
        put(f"{version}/config.json", b"{}")
    res = fetch(MODEL_PREFIX=prefix)
    assert res.code == 2, res.stderr
    line = (dest.parent / "termination-log").read_text()
    assert f"but '{prefix}v1/' (and 1 more) does" in line
    assert f"s3://{BUCKET}/{prefix}v1/" in line
    assert tree(dest) == {}


# --- item 9: filters ---------------------------------------------------------------------------


def test_filters_that_select_nothing_are_refused(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path, prefix: str
) -> None:
    put("config.json", b"{}")
    put("weights.safetensors", b"w")
    res = fetch(FETCH_INCLUDE="*.gguf")
    assert res.code == 2, res.stderr
    assert f"the filters select 0 of 2 objects under s3://{BUCKET}/{prefix}" in res.stderr
    assert tree(dest) == {}
    assert not res.events("done")


def test_a_shard_removed_by_a_filter_is_named_as_such(
    s3: Any, fetch: Callable[..., Result], dest: Path, prefix: str, tmp_path: Path
) -> None:
    local = tmp_path / "model"
    write_sample_model(local, 64 << 10, shards=2)
    for path in local.iterdir():
        s3.put_object(Bucket=BUCKET, Key=prefix + path.name, Body=path.read_bytes())
    res = fetch(FETCH_EXCLUDE="model-00002-of-00002.safetensors")
    assert res.code == 2, res.stderr
    line = (dest.parent / "termination-log").read_text()
    assert "the filters removed model-00002-of-00002.safetensors, which " in line
    assert "model.safetensors.index.json names" in line


# --- item 12: keys that cannot be file names ---------------------------------------------------


def test_every_refused_key_is_named_in_one_message_before_any_download(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
) -> None:
    put("long.bin", b"long")
    put("config.json", b"{}")
    put("tok.json", b"{}")
    put("weights.bin", os.urandom(PART))
    # AWS keeps 1024 bytes per key, ext4 and xfs 255 per name; SeaweedFS itself refuses the
    # long one and normalises "a//b": a rewritten listing brings them, as other servers would.
    rename = {
        b"long.bin</Key>": b"x" * 256 + b".bin</Key>",
        b"config.json</Key>": b"a//b.json</Key>",
        b"tok.json</Key>": b"a\\b.json</Key>",
    }

    def rewrite(body: bytes) -> bytes:
        for old, new in rename.items():
            body = body.replace(old, new)
        return body

    proxy.add_fault(
        RewriteBody(rewrite), method="GET", path_contains=f"/{BUCKET}", ranged=False, times=None
    )
    res = fetch(endpoint=proxy.endpoint)
    assert res.code == 4, res.stderr
    (err,) = res.events("error")
    assert "refusing 3 unsafe object keys" in err["msg"]
    assert "'a//b.json': it has an empty or '.' path component" in err["msg"]
    assert "it contains a backslash" in err["msg"]
    assert "component of 260 bytes, longer than the cache file system's limit of 255" in err["msg"]
    assert "escape" not in err["msg"]
    assert not [r for r in proxy.requests if r.method == "GET" and "weights.bin" in r.path]
    assert tree(dest) == {}
    res = fetch(endpoint=proxy.endpoint, FETCH_EXCLUDE="a*.json,x*.bin")  # all in one run
    assert res.code == 0, res.stderr
    assert sorted(tree(dest)) == ["weights.bin"]


# --- item 7: a mistyped command; --version -----------------------------------------------------


@pytest.mark.parametrize(
    ("word", "hint"), [("verfy", "verify"), ("stauts", "status"), ("help", "--help")]
)
def test_a_mistyped_command_is_refused_not_taken_as_dest(
    word: str,
    hint: str,
    s3_server: SeaweedServer,
    put: Callable[[str, bytes], None],
    prefix: str,
    tmp_path: Path,
) -> None:
    put("config.json", b"{}")
    env = pod_env(s3_server, prefix, tmp_path / "unused")
    del env["MODEL_CACHE_DIR"]  # as on a laptop: only the command line names a directory
    res = run_fetcher([word], env, cwd=tmp_path)
    assert res.code == 2, res.stderr
    assert f"unknown command '{word}' (did you mean {hint}?)" in res.stderr
    assert not (tmp_path / word).exists()


def test_registry_uris_and_paths_are_not_taken_for_commands(tmp_path: Path) -> None:
    for first in ("models:/llama/3", "model-registry://llama/1", "s3://llm-models/m/v1/"):
        res = run_fetcher([first, str(tmp_path / "d")], {"MINIO_BUCKET": BUCKET}, timeout=30)
        assert "unknown command" not in res.stderr, (first, res.stderr)


def test_version_is_printed_and_recorded(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result]
) -> None:
    from fetcher import __version__

    res = run_fetcher(["--version"], {})
    assert (res.code, res.stdout) == (0, f"model-fetcher {__version__}\n")
    put("config.json", b"{}")
    res = fetch()
    assert res.code == 0, res.stderr
    assert res.events("start")[0]["version"] == __version__
    res = fetch("status")
    assert json.loads(res.stdout)["fetcher_version"] == __version__


# --- item 11: the serving command is resolved first ---------------------------------------------


@pytest.mark.parametrize("command", ["/no/such/vllm", "no-such-vllm-7f3"])
def test_a_missing_serving_command_exits_127_before_any_get(
    command: str,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    proxy: FaultProxy,
) -> None:
    put("weights.bin", os.urandom(PART))
    res = fetch("--", command, "serve", endpoint=proxy.endpoint)
    assert res.code == 127, res.stderr
    assert f"serving command '{command}'" in (dest.parent / "termination-log").read_text()
    assert proxy.requests == []  # not even the LIST
    assert tree(dest) == {}


# --- item 3: a server that ignores Range -------------------------------------------------------


def test_a_server_that_ignores_range_is_named_as_such(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path, proxy: FaultProxy
) -> None:
    put("weights.bin", os.urandom(3 * PART))
    proxy.add_fault(DropHeader("Range"), method="GET", ranged=True, times=None)
    res = fetch(endpoint=proxy.endpoint, FETCH_PART_SIZE=str(PART), FETCH_RETRIES="2")
    assert res.code == 4, res.stderr
    line = (dest.parent / "termination-log").read_text()
    assert "the server did not honour Range requests (200 with the whole object" in line
    assert "Content-Length" not in line
    assert tree(dest) == {}


# --- item 5: a URI that names one object --------------------------------------------------------


@pytest.mark.parametrize("plane", ["keys", "chain"])
def test_a_uri_naming_one_object_fetches_that_object(
    plane: str,
    s3_server: SeaweedServer,
    put: Callable[[str, bytes], None],
    prefix: str,
    dest: Path,
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * PART + 1)
    put("llama-3-8b.Q4_K_M.bin", data)
    put("llama-3-8b.Q4_K_M.bin.sig", b"a sibling that must not come along")
    env = pod_env(s3_server, prefix, dest)
    del env["MODEL_PREFIX"], env["MINIO_BUCKET"], env["MODEL_CACHE_DIR"]
    env |= chain_env(s3_server, tmp_path) if plane == "chain" else {}
    uri = f"s3://{BUCKET}/{prefix}llama-3-8b.Q4_K_M.bin"
    res = run_fetcher([uri, str(dest)], {**env, "FETCH_PART_SIZE": str(PART)})
    assert res.code == 0, res.stderr
    assert tree(dest) == {"llama-3-8b.Q4_K_M.bin": data}
    again = run_fetcher([uri, str(dest)], env)  # warm: kept, not fetched again
    assert again.code == 0, again.stderr
    assert again.events("done")[0]["files_fetched"] == 0
    assert run_fetcher(["verify", str(dest), "--full"], env).code == 0


# --- item 6: a read-only cache -----------------------------------------------------------------


def run_on_read_only(dest: Path, args: list[str], env: dict[str, str]) -> Result:
    """The fetcher with DEST bind-mounted read-only, in a user and mount namespace of its own
    (`unshare -rm`: the mount is the child's alone and goes away with it; the network is
    shared, so the server on 127.0.0.1 is reachable)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    argv = ["unshare", "-rm", "sh", "-c", script, "sh", str(dest)]
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    proc = subprocess.run(
        [*argv, sys.executable, "-m", "fetcher", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    res = run_on_read_only(probe, ["--version"], {})
    return res.code == 0


def test_a_read_only_cache_is_served_when_complete_and_refused_as_read_only_when_not(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    s3_server: SeaweedServer,
    prefix: str,
    dest: Path,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    if not _can_mount_read_only(tmp_path):
        pytest.skip("no user namespaces here: cannot mount a read-only volume as a test")
    put("config.json", b"{}")
    put("weights.bin", os.urandom(2 * PART))
    assert fetch(FETCH_PART_SIZE=str(PART)).code == 0
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    env = pod_env(s3_server, prefix, dest, proxy.endpoint)
    res = run_on_read_only(dest, [], env)
    assert res.code == 0, res.stderr
    assert [e["event"] for e in res.events()].count("cache_read_only") == 1
    assert proxy.requests == []  # nothing can change on a read-only volume: not even a LIST
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before
    res = run_on_read_only(dest, ["--verify", "full"], env)
    assert res.code == 0, res.stderr

    (dest / "weights.bin").unlink()
    res = run_on_read_only(dest, [], {**env, "FETCH_TERMINATION_LOG": str(tmp_path / "t-log")})
    assert res.code == 5, res.stderr
    line = (tmp_path / "t-log").read_text()
    assert "is on a read-only volume (EROFS)" in line and "Permission denied" not in line


# --- item 10: publish ------------------------------------------------------------------------


def test_publish_honours_filters_and_skips_git_and_the_hf_cache(
    s3_server: SeaweedServer, s3: Any, tmp_path: Path
) -> None:
    local = tmp_path / "clone"
    files = {
        "config.json": b"{}",
        "tokenizer.json": b"{}",
        "weights.bin": os.urandom(1000),
        ".git/lfs/objects/ab/cd/abcd": os.urandom(1000),  # a second copy of weights.bin
        ".git/HEAD": b"ref: refs/heads/main\n",
        ".cache/huggingface/download/weights.bin.metadata": b"x",
        "sub/.git/config": b"[core]",
    }
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    prefix = f"pub-{uuid.uuid4().hex[:8]}/v1/"
    env = pod_env(s3_server, prefix, tmp_path / "unused")
    res = run_fetcher(
        ["publish", str(local), f"s3://{BUCKET}/{prefix}", "--include", "*.json"], env
    )
    assert res.code == 0, res.stderr
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert sorted(o["Key"][len(prefix) :] for o in listed) == [
        ".model-manifest.json",
        "config.json",
        "tokenizer.json",
    ]
    assert "published 2 files" in res.events("published")[0]["msg"]
    prefix2 = f"pub-{uuid.uuid4().hex[:8]}/v1/"
    res = run_fetcher(["publish", str(local), f"s3://{BUCKET}/{prefix2}"], env)
    assert res.code == 0, res.stderr
    skipped = sorted(e["msg"].split(":")[0] for e in res.events("publish_skipped"))
    assert skipped == ["skipping .cache/huggingface/", "skipping .git/", "skipping sub/.git/"]
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix2)["Contents"]
    assert sorted(o["Key"][len(prefix2) :] for o in listed) == [
        ".model-manifest.json",
        "config.json",
        "tokenizer.json",
        "weights.bin",
    ]


# --- item 16: DEST on the container's root file system ------------------------------------------


def test_a_missing_dest_on_the_root_file_system_in_a_pod_is_warned_about(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    assert os.stat(dest.parent).st_dev == os.stat("/").st_dev  # tmp_path is on / here
    res = fetch(KUBERNETES_SERVICE_HOST="10.96.0.1")  # an address never contacted
    assert res.code == 0, res.stderr
    (warning,) = res.events("cache_not_a_volume")
    assert warning["dest"] == str(dest)
    again = fetch(KUBERNETES_SERVICE_HOST="10.96.0.1")  # exists now: said once, not each start
    assert again.code == 0 and not again.events("cache_not_a_volume")
    assert not fetch(MODEL_CACHE_DIR=str(dest.parent / "other")).events("cache_not_a_volume")


def test_a_missing_dest_on_a_mounted_volume_is_not_warned_about(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], prefix: str
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat("/").st_dev:
        pytest.skip("no separate tmpfs at /dev/shm to stand for a volume")
    put("config.json", b"{}")
    dest = shm / f"i13-{uuid.uuid4().hex[:8]}" / "cache"
    try:
        res = fetch(KUBERNETES_SERVICE_HOST="10.96.0.1", MODEL_CACHE_DIR=str(dest))
        assert res.code == 0, res.stderr
        assert not res.events("cache_not_a_volume")
    finally:
        shutil.rmtree(dest.parent, ignore_errors=True)


# --- item 13: files present without a state that vouches for them -------------------------------


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_present_files_are_proved_by_the_manifest_and_kept(
    damage: str,
    s3_server: SeaweedServer,
    fetch: Callable[..., Result],
    dest: Path,
    prefix: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    local = tmp_path / "model"
    write_sample_model(local, 256 << 10, shards=2)
    env = pod_env(s3_server, prefix, tmp_path / "unused")
    res = run_fetcher(["publish", str(local), f"s3://{BUCKET}/{prefix}"], env)
    assert res.code == 0, res.stderr
    assert fetch(FETCH_PART_SIZE=str(PART)).code == 0
    state = dest / ".fetcher" / "state.json"
    if damage == "missing":
        state.unlink()
    else:
        state.write_text("{not json")
    res = fetch(endpoint=proxy.endpoint)
    assert res.code == 0, res.stderr
    assert res.events("done")[0]["files_fetched"] == 0
    assert res.events("files_adopted")[0]["files"] == len(list(local.iterdir()))
    assert not [r for r in proxy.requests if r.ranged]  # not one byte downloaded again
    assert json.loads(state.read_text())["complete"] is True
    assert fetch("verify", "--full").code == 0


def test_a_cache_filled_by_another_tool_is_adopted_where_s3_checksums_prove_it(
    s3: Any, prefix: str, fetch: Callable[..., Result], dest: Path
) -> None:
    files = {"config.json": b'{"a": 1}', "w1.bin": os.urandom(3 * PART), "w2.bin": b"x" * 999}
    for rel, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data, ChecksumAlgorithm="SHA256")
    dest.mkdir(parents=True)  # as `aws s3 sync` leaves it: no .fetcher/, one file stale
    for rel, data in files.items():
        (dest / rel).write_bytes(data if rel != "w2.bin" else b"y" * 999)
    res = fetch(FETCH_PART_SIZE=str(PART))
    assert res.code == 0, res.stderr
    assert tree(dest) == files
    assert res.events("done")[0]["files_fetched"] == 1
    (foreign,) = res.events("replacing_foreign_file")
    assert (
        foreign["file"] == "w2.bin"
        and "bytes differ from the source's (s3:sha256)" in (foreign["msg"])
    )
    assert fetch("verify", "--full").code == 0
