"""Where everything of the fetcher's own lives under DEST: the one owner of `.fetcher/` paths.

DEST/<rel>                      model files, only ever complete and verified
DEST/.fetcher/state.json        what the fetcher placed (size, etag, xxh3, mtime)
DEST/.fetcher/manifest.json     the copy of the remote manifest the state was built from
DEST/.fetcher/partial/<h>.part  a download in progress (never named *.safetensors)
DEST/.fetcher/partial/<h>.json  its journal: etag, size, part size, finished parts
DEST/.fetcher/partial/commits.log  renames into place not yet in the state (commits.py)
DEST/.fetcher/lock, lease.json  one downloader per cache (lease.py)
DEST/.fetcher/.<name>.*.tmp     a JSON file being replaced atomically
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

META_DIR = ".fetcher"


@dataclass(frozen=True)
class Layout:
    dest: Path

    # Cached: asked for every file's partial path (three path joins each, otherwise).
    @functools.cached_property
    def meta(self) -> Path:
        return self.dest / META_DIR

    @functools.cached_property
    def partial_dir(self) -> Path:
        return self.meta / "partial"

    @property
    def commit_log(self) -> Path:
        return self.partial_dir / "commits.log"

    @property
    def state_path(self) -> Path:
        return self.meta / "state.json"

    @property
    def manifest_copy(self) -> Path:
        return self.meta / "manifest.json"

    @property
    def lock_path(self) -> Path:
        return self.meta / "lock"

    @property
    def lease_path(self) -> Path:
        return self.meta / "lease.json"

    def partial_base(self, key: str) -> Path:
        """`<h>` of a key's partial file and journal: a hash, so that no key, however long or
        odd, names a file under .fetcher/ (and none ends in .safetensors)."""
        return self.partial_dir / hashlib.sha256(key.encode()).hexdigest()[:32]

    def temp_files(self) -> list[Path]:
        return list(self.meta.glob(".*.tmp"))
