"""The small files' fsync batcher (transfer/syncer.py) and the one-listing presence check, on
real files in tmp_path: every file given to the batcher is fsynced, checked and closed; one
file's failure is that file's alone; a cancelled caller's descriptor is still closed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fetcher.cache.partial import write_whole
from fetcher.cache.store import Cache
from fetcher.errors import CacheError, InvalidModel
from fetcher.transfer.syncer import Syncer


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_every_file_is_settled_and_closed(tmp_path: Path) -> None:
    checked: list[str] = []

    async def main() -> list[int]:
        syncer = Syncer()
        fds = []
        for i in range(300):  # more than one batch per thread
            path = tmp_path / f"f{i}.part"
            fd = write_whole(path, f"body {i}".encode())
            fds.append(fd)
        check = checked.append
        await asyncio.gather(
            *(
                syncer.settle(fd, tmp_path / f"f{i}.part", lambda i=i: check(str(i)))
                for i, fd in enumerate(fds)
            )
        )
        return fds

    fds = asyncio.run(main())
    assert sorted(checked, key=int) == [str(i) for i in range(300)]
    assert not any(_is_open(fd) for fd in fds)
    assert (tmp_path / "f299.part").read_bytes() == b"body 299"


def test_a_failed_check_fails_its_own_file_only(tmp_path: Path) -> None:
    def refuse() -> None:
        raise InvalidModel("bad.json: not JSON")

    async def main() -> list[BaseException | None]:
        syncer = Syncer()
        good = write_whole(tmp_path / "good.part", b"{}")
        bad = write_whole(tmp_path / "bad.part", b"<html>")
        results = await asyncio.gather(
            syncer.settle(good, tmp_path / "good.part", None),
            syncer.settle(bad, tmp_path / "bad.part", refuse),
            return_exceptions=True,
        )
        assert not _is_open(good) and not _is_open(bad)
        return list(results)

    good_result, bad_result = asyncio.run(main())
    assert good_result is None
    assert isinstance(bad_result, InvalidModel)


def test_an_fsync_error_is_a_cache_error(tmp_path: Path) -> None:
    async def main() -> None:
        fd = write_whole(tmp_path / "x.part", b"x")
        os.close(fd)
        other = os.open(os.devnull, os.O_RDONLY)  # a descriptor fsync refuses (EINVAL)
        assert other == fd  # the lowest free number: the one just closed
        await Syncer().settle(other, tmp_path / "x.part", None)

    with pytest.raises(CacheError, match=r"x\.part"):
        asyncio.run(main())


def test_a_cancelled_caller_leaves_no_descriptor_open(tmp_path: Path) -> None:
    async def main() -> list[int]:
        syncer = Syncer()
        fds = [write_whole(tmp_path / f"c{i}.part", b"c") for i in range(50)]
        tasks = [
            asyncio.create_task(syncer.settle(fd, tmp_path / f"c{i}.part", None))
            for i, fd in enumerate(fds)
        ]
        await asyncio.sleep(0)  # queued; the first batches handed to threads
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # the threads holding batches finish them
        return fds

    fds = asyncio.run(main())
    assert not any(_is_open(fd) for fd in fds)


def test_regular_files_lists_each_folder_once_and_skips_links_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "top.bin").write_bytes(b"1")
    (tmp_path / "a" / "b" / "deep.bin").write_bytes(b"2")
    (tmp_path / "a" / "link.bin").symlink_to(tmp_path / "top.bin")
    (tmp_path / "a" / "dir.bin").mkdir()
    rels = ["top.bin", "a/b/deep.bin", "a/link.bin", "a/dir.bin", "a/missing.bin", "z/none.bin"]
    assert Cache(tmp_path).regular_files(rels) == {"top.bin", "a/b/deep.bin"}


def test_a_file_queued_as_all_workers_leave_still_gets_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four workers finish in one loop step, and one caller hands over its next file before
    their done callbacks have run: it once waited for ever (all four slots looked taken).
    The thread hand-off is replaced by one that finishes every batch in the same loop step,
    to make that order certain; the files, their fsyncs and the closing are real."""

    async def same_step(func: Callable[..., object], /, *args: object) -> object:
        await asyncio.sleep(0)
        return func(*args)

    monkeypatch.setattr(asyncio, "to_thread", same_step)

    async def main() -> None:
        syncer = Syncer()

        async def files(n: int, count: int) -> None:
            for i in range(count):
                path = tmp_path / f"w{n}-{i}.part"
                await syncer.settle(write_whole(path, b"w"), path, None)

        work = asyncio.gather(files(0, 2), files(1, 1), files(2, 1), files(3, 1))
        await asyncio.wait_for(work, 10)

    asyncio.run(main())
    assert (tmp_path / "w0-1.part").read_bytes() == b"w"
