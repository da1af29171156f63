"""`verify --full` under a signed cache: every file's sha256 against the model.sig that lies in
DEST, whose root digest must still be the one the fetch verified (issue 12). Offline: the
signature's ECDSA was checked at fetch time against the configured keys; here the recorded
root digest binds the local model.sig to that verification."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fetcher.errors import SignatureError
from fetcher.verify.hashes import HASH_BLOCK
from fetcher.verify.oms import SIGNATURE_NAME, read_envelope, read_statement


def _ranges_sha256(path: Path, ranges: list[tuple[int, int]]) -> list[str]:
    out = []
    with open(path, "rb", buffering=0) as fh:
        for start, end in ranges:
            fh.seek(start)
            h, left = hashlib.sha256(), end - start
            while left > 0 and (block := fh.read(min(HASH_BLOCK, left))):
                h.update(block)
                left -= len(block)
            out.append(h.hexdigest())
    return out


def signature_problems(dest: Path, recorded: str | None) -> list[str]:
    """Problems of the cache against its signature; none when the fetch was not signed."""
    if recorded is None:
        return []
    try:
        statement = read_statement(read_envelope((dest / SIGNATURE_NAME).read_bytes()).payload)
    except OSError as exc:
        return [f"{SIGNATURE_NAME}: unreadable ({exc.strerror}), the fetch verified {recorded}"]
    except SignatureError as exc:
        return [str(exc)]
    if statement.pin != recorded:
        return [f"{SIGNATURE_NAME}: root digest {statement.pin}, the fetch verified {recorded}"]
    if statement.method == "files":
        want = {rel: [(0, -1, d)] for rel, d in statement.files().items()}
    else:
        want = statement.shards()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [p for p in pool.map(lambda kv: _check(dest, *kv), sorted(want.items())) if p]


def _check(dest: Path, rel: str, shards: list[tuple[int, int, str]]) -> str | None:
    path = dest / rel
    try:
        if shards[0][1] == -1:  # files mode: the whole file
            shards = [(0, path.stat().st_size, shards[0][2])]
        got = _ranges_sha256(path, [(s, e) for s, e, _ in shards])
    except OSError as exc:
        return f"{rel}: unreadable ({exc.strerror})"
    if got != [d for _, _, d in shards]:
        return f"{rel}: sha256 differs from {SIGNATURE_NAME}"
    return None
