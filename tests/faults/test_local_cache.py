"""The local side under pressure: a volume too small for two copies, things planted in the
fetcher's own directory, a state file that lies."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from devtools.seaweed import SeaweedServer
from tests.conftest import Result, pod_env, run_fetcher, tree
from tests.faults.proxy import FaultProxy, Status
from tests.faults.test_reliability import mount_tmpfs

PART = 256 * 1024


def test_interrupted_fetch_resumes_on_a_volume_without_room_for_two_copies(
    put: Callable[[str, bytes], None],
    s3_server: SeaweedServer,
    proxy: FaultProxy,
    prefix: str,
    tmp_path: Path,
) -> None:
    data = os.urandom(4 * 2**20)
    put("weights.bin", data)
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mount_tmpfs(mnt, "size=6m")
    try:
        dest = mnt / "cache"
        # The last part keeps failing: the first run stops with the rest of the file on disk.
        proxy.add_fault(
            Status(503, "SlowDown"),
            method="GET",
            path_contains=prefix,
            ranged=True,
            times=None,
            skip=12,
        )
        env = {**pod_env(s3_server, prefix, dest), "FETCH_PART_SIZE": str(PART)}
        first = run_fetcher([], {**env, "MINIO_ENDPOINT": proxy.endpoint, "FETCH_RETRIES": "2"})
        assert first.code == 3, first.stderr
        assert len(list((dest / ".fetcher" / "partial").glob("*.part"))) == 1
        # 4 MiB held by the partial file, 2 MiB free: the resume needs no more than that.
        again = run_fetcher([], env)
        assert again.code == 0, again.stderr
        assert tree(dest) == {"weights.bin": data}
        assert again.events("resume")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_link_planted_in_place_of_a_partial_file_is_not_followed(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    dest: Path,
    prefix: str,
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * PART + 5)
    put("model.bin", data)
    assert fetch(FETCH_PART_SIZE=str(PART)).code == 0
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not yours")
    (dest / "model.bin").unlink()
    state = dest / ".fetcher" / "state.json"
    state.unlink()
    name = hashlib.sha256((prefix + "model.bin").encode()).hexdigest()[:32]
    (dest / ".fetcher" / "partial" / f"{name}.part").symlink_to(victim)
    res = fetch(FETCH_PART_SIZE=str(PART))
    assert res.code == 0, res.stderr
    assert victim.read_bytes() == b"not yours"
    final = dest / "model.bin"
    assert not final.is_symlink() and final.read_bytes() == data


def test_state_naming_a_path_outside_the_cache_is_rebuilt(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path, tmp_path: Path
) -> None:
    put("config.json", b"{}")
    assert fetch().code == 0
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    state_path = dest / ".fetcher" / "state.json"
    doc = json.loads(state_path.read_text())
    doc["files"]["../outside.bin"] = dict(doc["files"]["config.json"], size=7)
    state_path.write_text(json.dumps(doc))
    for _ in range(2):  # and not again and again
        res = fetch()
        assert res.code == 0, res.stderr
        assert outside.read_bytes() == b"keep me"
        assert tree(dest) == {"config.json": b"{}"}
    assert fetch("verify").code == 0


def test_key_the_fetcher_refuses_can_be_excluded(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    put(".fetcher/state.json", b"planted")
    res = fetch()
    assert res.code == 4
    assert "it would land in the fetcher's own .fetcher/ directory" in res.stderr
    res = fetch(FETCH_EXCLUDE=".fetcher/*")
    assert res.code == 0, res.stderr
    assert tree(dest) == {"config.json": b"{}"}
    assert json.loads((dest / ".fetcher" / "state.json").read_text())["complete"] is True


def test_keys_that_make_one_name_a_file_and_a_folder_are_refused_before_any_download(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    put("extra", b"a file")
    put("extra/notes.txt", b"under a folder of the same name")
    res = fetch()
    assert res.code == 4
    assert "refusing 'extra' and 'extra/notes.txt'" in res.stderr
    assert tree(dest) == {}
    res = fetch(FETCH_EXCLUDE="extra")
    assert res.code == 0, res.stderr
    assert tree(dest) == {
        "config.json": b"{}",
        "extra/notes.txt": b"under a folder of the same name",
    }


def test_dest_that_is_a_file_or_a_dangling_link_is_named_as_such(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path, tmp_path: Path
) -> None:
    put("config.json", b"{}")
    dest.write_bytes(b"not a directory")
    for command in ((), ("verify",), ("status",)):
        res = fetch(*command)
        assert res.code == 5, (command, res.stderr)
        assert f"{dest} is not a directory" in res.stderr
    dest.unlink()
    dest.symlink_to(tmp_path / "gone")
    res = fetch()
    assert res.code == 5
    assert f"{dest} is a link to {tmp_path / 'gone'}, which does not exist" in res.stderr
