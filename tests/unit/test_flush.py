"""Which DEST gets one syncfs per batch of small files (cache/flush.py): only a whole file
system of its own, read from a mount table; and a failed flush falls back to an fsync per
file. Real files in tmp_path; the mount tables are written out, since this machine's own has
neither a PVC nor a hostPath. A fetch onto a real tmpfs volume is in test_small_files.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fetcher.cache import flush
from fetcher.cache.flush import volume_flush
from fetcher.cache.partial import write_whole
from fetcher.cache.volume import mount_of
from fetcher.errors import CacheError
from fetcher.transfer.syncer import _settle_all

# Shaped like a pod's: the overlay root, a PVC (a whole ext4), a hostPath and an emptyDir
# (directories bound from the node's disk), a path with a space.
MOUNTINFO = """\
1200 1100 0:310 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u
1201 1200 8:16 / /models rw,relatime - ext4 /dev/sdb rw
1202 1200 8:1 /var/lib/model-cache /node-cache rw,relatime - ext4 /dev/sda1 rw
1203 1200 8:1 /var/lib/kubelet/pods/u/volumes/empty-dir/c /scratch rw - ext4 /dev/sda1 rw
1204 1200 8:32 / /with\\040space rw,relatime - xfs /dev/sdc rw
1205 1201 8:48 / /models/inner rw,relatime - xfs /dev/sdd rw
1206 1200 0:90 / /juicefs rw,relatime shared:7 - fuse.juicefs JuiceFS:m rw,user_id=0
1207 1200 0:91 / /nfs rw,relatime - nfs4 10.0.0.1:/export rw,vers=4.2
"""


def _table(tmp_path: Path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return str(path)


def test_the_mount_that_holds_a_path_is_the_longest_above_it(tmp_path: Path) -> None:
    table = _table(tmp_path)
    assert mount_of("/models/llama/v1", table) == ("/", "/models", "ext4")
    assert mount_of("/models", table) == ("/", "/models", "ext4")
    assert mount_of("/models/inner/x", table) == ("/", "/models/inner", "xfs")
    assert mount_of("/modelsX/a", table) == ("/", "/", "overlay")  # a name's prefix: no mount
    assert mount_of("/node-cache/m", table) == ("/var/lib/model-cache", "/node-cache", "ext4")
    assert mount_of("/scratch/m", table)[0].endswith("empty-dir/c")  # type: ignore[index]
    assert mount_of("/with space/m", table) == ("/", "/with space", "xfs")
    assert mount_of("/juicefs/m", table) == ("/", "/juicefs", "fuse.juicefs")
    assert mount_of("/nfs/m", table) == ("/", "/nfs", "nfs4")
    assert mount_of("/x", str(tmp_path / "missing")) is None


def test_which_mounts_get_a_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole local file system of its own only: not the root, not a directory bound from
    the node's disk (hostPath, emptyDir), not FUSE or NFS (their syncfs is not an fsync)."""
    table = _table(tmp_path)
    monkeypatch.setattr(flush, "mount_of", lambda path: mount_of(path, table))
    monkeypatch.setattr(os.path, "realpath", lambda path: str(path))
    # The kernel's part of the rule is the next test's: this one holds on any kernel.
    monkeypatch.setattr(flush, "_kernel_reports_errors", lambda: True)
    for volume in ("/models/m", "/models/inner/m", "/with space/m"):
        assert volume_flush(Path(volume)) is not None, volume
    for refused in ("/modelsX/m", "/node-cache/m", "/scratch/m", "/juicefs/m", "/nfs/m"):
        assert volume_flush(Path(refused)) is None, refused


@pytest.mark.parametrize(
    ("sysname", "release", "used"),
    [
        ("Linux", "5.4.0-150-generic", False),  # syncfs swallowed write-back errors
        ("Linux", "5.8.0", True),
        ("Linux", "6.1.0-18-amd64", True),
        ("Linux", "4.19.0", False),
        ("Linux", "unparsable", False),
        ("Darwin", "23.1.0", False),
    ],
)
def test_syncfs_only_where_the_kernel_reports_its_errors(
    monkeypatch: pytest.MonkeyPatch, sysname: str, release: str, used: bool
) -> None:
    """By uname: a stub, since this machine boots one kernel only."""
    fake = os.uname_result((sysname, "node", release, "#1", "x86_64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert flush._kernel_reports_errors() is used


def test_only_a_volume_of_its_own_is_flushed_whole(tmp_path: Path) -> None:
    # This machine: tmp_path is on the root file system, so each file keeps its fsync.
    assert volume_flush(tmp_path) is None


def test_a_failed_flush_falls_back_to_an_fsync_per_file(tmp_path: Path) -> None:
    flushed: list[int] = []

    def failing(fd: int) -> bool:
        flushed.append(fd)
        return False

    fds = [write_whole(tmp_path / f"f{i}", b"x" * i) for i in range(5)]
    items = [(fd, tmp_path / f"f{i}", None, None) for i, fd in enumerate(fds)]
    assert _settle_all(items, failing) == [None] * 5  # type: ignore[arg-type]
    assert flushed == [fds[0]]  # once per batch, on the file opened first
    for fd in fds:
        try:
            os.fstat(fd)
            raise AssertionError(f"descriptor {fd} left open")
        except OSError:
            pass


def test_a_good_flush_stands_for_the_fsyncs_a_failed_one_does_not(
    tmp_path: Path,
) -> None:
    # /dev/null refuses fsync (EINVAL): its result says whether an fsync was made for it.
    def batch() -> list[tuple[int, Path, None, None]]:
        good = write_whole(tmp_path / "good", b"g")
        null = os.open(os.devnull, os.O_WRONLY)
        return [(good, tmp_path / "good", None, None), (null, tmp_path / "null", None, None)]

    assert _settle_all(batch(), lambda fd: True) == [None, None]  # type: ignore[arg-type]
    errors = _settle_all(batch(), lambda fd: False)  # type: ignore[arg-type]
    assert errors[0] is None and isinstance(errors[1], CacheError)
