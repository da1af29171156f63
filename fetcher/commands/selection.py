"""Whether what a listing and the filters select can become the model, decided before any GET.

Each check here stood for a first-week surprise (issue 13): a prefix one level too high, filters
that select nothing (an empty directory served with exit 0), and keys that cannot become file
names, found one per run and only after their download.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from fetcher.cache.keys import file_folder_clashes, unsafe_reason
from fetcher.config import Config
from fetcher.errors import ConfigError, UnsafeKey
from fetcher.source.base import RemoteObject
from fetcher.verify.formats import INDEX_SUFFIX
from fetcher.verify.manifest import MANIFEST_NAME
from fetcher.verify.oms import PARTS_SIGNATURE_NAME

_SHOWN = 20  # refused keys named in the message; the count says how many more
NAME_MAX = 255  # ext4, xfs; asked of the cache's own file system where it can say


def wanted(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """The include / exclude globs, matched on the path under DEST or on its file name."""

    def hit(patterns: tuple[str, ...]) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    own = (MANIFEST_NAME, PARTS_SIGNATURE_NAME)  # ours: stay in the bucket (and .fetcher/)
    return rel not in own and (not include or hit(include)) and not hit(exclude)


def selected(
    objs: list[RemoteObject], include: tuple[str, ...], exclude: tuple[str, ...]
) -> list[RemoteObject]:
    return [o for o in objs if wanted(o.rel, include, exclude)]


def check_prefix_level(listing: list[RemoteObject], cfg: Config) -> None:
    """A manifest below the prefix but none at it: the prefix names the model's parent, and
    a fetch would mix every version under it into one directory."""
    if cfg.whole_bucket or any(o.rel == MANIFEST_NAME for o in listing):
        return
    below = sorted(
        cfg.prefix + o.rel[: -len(MANIFEST_NAME)]
        for o in listing
        if o.rel.endswith("/" + MANIFEST_NAME)
    )
    if below:
        more = f" (and {len(below) - 1} more)" if len(below) > 1 else ""
        raise ConfigError(
            f"prefix {cfg.prefix!r} holds no {MANIFEST_NAME}, but {below[0]!r}{more} does: "
            f"set the prefix to the model's own folder, such as s3://{cfg.bucket}/{below[0]}"
        )


def check_selected(listing: list[RemoteObject], objs: list[RemoteObject], cfg: Config) -> None:
    """Filters that leave nothing would serve an empty directory."""
    files = [o for o in listing if o.rel != MANIFEST_NAME]
    if files and not objs:
        raise ConfigError(
            f"the filters select 0 of {len(files)} objects under s3://{cfg.bucket}/{cfg.prefix} "
            f"(include {list(cfg.include) or 'all'}, exclude {list(cfg.exclude) or 'none'}): "
            "check FETCH_INCLUDE / FETCH_EXCLUDE (or STORAGE_ALLOW_PATTERNS / _IGNORE_PATTERNS)"
        )


def refuse_bad_keys(rels: list[str], dest: Path) -> None:
    """Every key that cannot become a file under DEST, named in one message (the user
    excludes them all in one go, not one per run)."""
    name_max = _name_max(dest)
    problems = [f"{rel!r}: {why}" for rel in rels if (why := _key_problem(rel, name_max))]
    problems += [
        f"{folder!r} and {rel!r}: the first would have to be both a file and a folder"
        for folder, rel in file_folder_clashes(rels)
    ]
    if not problems:
        return
    n = len(problems)
    more = f"; and {n - _SHOWN} more" if n > _SHOWN else ""
    raise UnsafeKey(
        f"refusing {n} unsafe object key{'s' if n > 1 else ''} (FETCH_EXCLUDE can skip "
        f"{'them' if n > 1 else 'it'}): " + "; ".join(problems[:_SHOWN]) + more
    )


def _key_problem(rel: str, name_max: int) -> str | None:
    if why := unsafe_reason(rel):
        return why
    longest = max(rel.split("/"), key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > name_max:
        return (
            f"a path component of {len(os.fsencode(longest))} bytes, longer than the cache "
            f"file system's limit of {name_max}"
        )
    return None


def _name_max(dest: Path) -> int:
    try:
        return int(os.pathconf(dest, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def check_filtered_shards(dest: Path, files: list[str], filtered: set[str]) -> None:
    """A shard that an index names but the filters left out: said as such, not as a shard
    missing from the model (it is in the bucket). Blocking reads: run in a thread."""
    for rel in files:
        if not rel.endswith(INDEX_SUFFIX):
            continue
        folder = rel.rpartition("/")[0]
        for shard in sorted(_index_shards(dest / rel)):
            shard_rel = f"{folder}/{shard}" if folder else shard
            if shard_rel in filtered:
                raise ConfigError(
                    f"the filters removed {shard_rel}, which {rel} names: "
                    "include it, or exclude the index too (FETCH_INCLUDE / FETCH_EXCLUDE)"
                )


def _index_shards(path: Path) -> set[str]:
    try:
        weight_map = json.loads(path.read_bytes()).get("weight_map", {})
        return {v for v in weight_map.values() if isinstance(v, str)}
    except (OSError, ValueError, AttributeError):
        return set()  # a broken index is check_model's to report
