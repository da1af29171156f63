"""`verify` and `status`: look at a cache without touching the network."""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fetcher import __version__
from fetcher.cache.state import FileState, State
from fetcher.cache.store import Cache
from fetcher.config import Config
from fetcher.errors import EXIT_OK, FetchError, IntegrityError, UnsafeKey
from fetcher.observe import log
from fetcher.verify.checks import check_model
from fetcher.verify.formats import skipped_note
from fetcher.verify.hashes import file_digest
from fetcher.verify.omscheck import signature_problems


def verify_command(cfg: Config) -> int:
    cache = Cache(cfg.dest)
    state = cache.read_state()
    if note := skipped_note(cfg.skip_format_checks):
        log.warning("format_checks_skipped", note)
    problems = find_problems(cache, state, cfg.full, cfg.skip_format_checks)
    for problem in problems:
        log.warning("verify_failed", problem)
    total = sum(fs.size for fs in state.files.values())
    dump_json(
        {
            "ok": not problems,
            "dest": str(cfg.dest),
            "files": len(state.files),
            "bytes": total,
            "mode": "full" if cfg.full else "fast",
            "problems": problems,
        }
    )
    if problems:
        # Raised, not returned: cli.py's error path logs it and writes the termination log.
        raise IntegrityError(_summary(cfg.dest, problems))
    return EXIT_OK


def _summary(dest: Path, problems: list[str]) -> str:
    more = len(problems) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"verify of {dest} failed: {problems[0]}{tail}"


def find_problems(
    cache: Cache, state: State, full: bool, skip: frozenset[str] = frozenset()
) -> list[str]:
    if not state.files:
        return [f"no model recorded in {cache.dest} (never fetched)"]
    problems = [] if state.complete else [_incomplete(state)]
    workers = min(len(state.files), os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = dict(
            zip(
                state.files,
                pool.map(lambda kv: _check_file(cache, kv[0], kv[1], full), state.files.items()),
                strict=True,
            )
        )
    problems += [p for p in checks.values() if p]
    if full:  # a signed cache: sha256 against model.sig as well (issue 12)
        problems += signature_problems(cache.dest, state.source.get("root_digest"))
    # The model checks run even on an incomplete cache, over the files that passed, so the
    # report names the shard a failed fetch refused (truncated, or missing from the index).
    intact = sorted(rel for rel, problem in checks.items() if problem is None)
    try:
        check_model(cache.dest, intact, skip)
    except FetchError as exc:
        problems.append(str(exc))
    return problems


def _incomplete(state: State) -> str:
    error = state.last_fetch.get("error")
    if error:
        return f"the last fetch failed, the cache is incomplete: {error}"
    return "the last fetch did not finish: the cache is incomplete"


def _check_file(cache: Cache, rel: str, fs: FileState, full: bool) -> str | None:
    try:
        path = cache.final_path(rel)
        st = os.lstat(path)
    except UnsafeKey as exc:
        return str(exc)
    except OSError:
        return f"{rel}: missing"
    if st.st_size != fs.size:
        return f"{rel}: size {st.st_size}, expected {fs.size}"
    if not full:
        return None if st.st_mtime_ns == fs.mtime_ns else f"{rel}: modified since it was fetched"
    try:
        digest = file_digest(path, fs.part_size)
    except OSError as exc:
        return f"{rel}: unreadable ({exc.strerror})"
    return None if digest == fs.xxh3 else f"{rel}: corrupt (xxh3 {digest}, expected {fs.xxh3})"


def status_command(cfg: Config) -> int:
    dump_json(status(Cache(cfg.dest)))
    return EXIT_OK


def status(cache: Cache) -> dict[str, Any]:
    state = cache.read_state()
    files = {
        rel: {
            "size": fs.size,
            "etag": fs.etag,
            "xxh3": fs.xxh3,
            "xxh3_part_size": fs.part_size,  # null: of the whole file; else over part digests
            "checksum": fs.checksum,
            "present": cache.is_present(rel, fs),
        }
        for rel, fs in sorted(state.files.items())
    }
    complete = cache.holds_complete(state)
    return {
        "fetcher_version": __version__,
        "dest": str(cache.dest),
        "source": state.source,
        "signature": _signature(state),
        "complete": complete,
        "files": files,
        "file_count": len(files),
        "total_bytes": sum(fs.size for fs in state.files.values()),
        "last_fetch": _last_fetch(state.last_fetch),
    }


def _signature(state: State) -> dict[str, str] | None:
    """What the fetch verified (issue 12); null for a model fetched without a trust policy."""
    if "root_digest" not in state.source:
        return None
    keys = ("root_digest", "signer", "serialization")
    return {k: state.source[k] for k in keys if k in state.source}


def _last_fetch(doc: dict[str, Any]) -> dict[str, Any]:
    """The recorded run, with its end also as UTC ISO 8601 for the people reading it."""
    finished = doc.get("finished")
    if not isinstance(finished, int | float):
        return doc
    try:
        when = datetime.fromtimestamp(finished, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return doc  # a damaged value: shown as recorded, with no date to make of it
    return {**doc, "finished_at": when.replace("+00:00", "Z")}


def dump_json(doc: object) -> None:
    try:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`status | head -1`): nothing more is wanted. Point stdout at
        # /dev/null so the flush at exit does not fail again (the Python docs' advice on SIGPIPE).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
