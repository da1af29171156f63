"""Which check a model file gets, the JSON files a server parses at start, and the weight maps
of sharded checkpoints (issue 16).

Families, each of which FETCH_SKIP_FORMAT_CHECKS can turn off (for a format the checks do not
understand yet):

- `safetensors`: every `*.safetensors` header (checks.py);
- `gguf`: every `*.gguf` header and split set (gguf.py);
- `index`: every `*.index.json`: it parses, and each shard its `weight_map` names is present;
- `json`: the JSON files a server reads at start (CONFIG_FILES) parse as a JSON object.

An HTML error page saved under a model file's name, or a file cut short, fails its family's
check in milliseconds, before the file gets its final name and before `publish` uploads it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from fetcher.errors import InvalidModel

FAMILIES = ("safetensors", "gguf", "index", "json")
INDEX_SUFFIX = ".index.json"
# Indexes that transformers loads by name: theirs must have a weight_map.
MAPPED_INDEXES = (".safetensors.index.json", ".bin.index.json")
CONFIG_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "processor_config.json",
        "special_tokens_map.json",
        "adapter_config.json",
    }
)
# json.loads builds every object: a 33 MiB tokenizer.json costs ~0.3 s and ~10x its size in
# memory, on every start. Larger files get the cheap check: a JSON object's first and last byte.
MAX_PARSED_JSON = 16 << 20
_ENDS = 4096


def family(rel: str) -> str | None:
    """The check family of a model file, by its name; None for files no check reads."""
    name = rel.rpartition("/")[2]  # PurePosixPath(rel).name, without building a path
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".gguf"):
        return "gguf"
    if name.endswith(INDEX_SUFFIX):
        return "index"
    return "json" if name in CONFIG_FILES else None


def parse_families(text: str) -> frozenset[str]:
    """FETCH_SKIP_FORMAT_CHECKS: a comma-separated list of FAMILIES, or `all`."""
    words = {w.strip().lower() for w in text.split(",") if w.strip()}
    if "all" in words:
        return frozenset(FAMILIES)
    if not words or words - set(FAMILIES):
        raise ValueError("expected a comma-separated list of " + ", ".join(FAMILIES) + " or all")
    return frozenset(words)


def load_json(path: Path, name: str) -> Any:
    """The parsed document; InvalidModel if it is missing, not UTF-8 or not JSON."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise InvalidModel(f"{name}: missing or not a file") from e
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise InvalidModel(f"{name}: not valid UTF-8 JSON: {_why(raw, e)}") from e


def _why(raw: bytes, exc: ValueError) -> str:
    if raw.lstrip()[:1] == b"<":
        return "it starts with '<' (an HTML or XML page saved under the file's name?)"
    if not raw.strip():
        return "the file is empty"
    return str(exc)


def check_json_file(path: Path, name: str) -> None:
    """A config or tokenizer file parses as a JSON object (larger ones: starts and ends like
    one)."""
    try:
        size = os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError) as e:
        raise InvalidModel(f"{name}: missing or not a file") from e
    if size > MAX_PARSED_JSON:
        _check_object_ends(path, name, size)
        return
    if not isinstance(load_json(path, name), dict):
        raise InvalidModel(f"{name}: not a JSON object")


def _check_object_ends(path: Path, name: str, size: int) -> None:
    with open(path, "rb") as f:
        head = f.read(_ENDS).lstrip()
        f.seek(max(0, size - _ENDS))
        tail = f.read().rstrip()
    if head[:1] != b"{" or tail[-1:] != b"}":
        why = "an HTML page?" if head[:1] == b"<" else "cut short?"
        raise InvalidModel(f"{name}: does not start with '{{' and end with '}}' ({why})")


def shard_name(index: str, shard: object) -> str:
    # Shards are siblings of the index; anything else could point a loader outside the model.
    p = PurePosixPath(shard) if isinstance(shard, str) else None
    if p is None or not shard or p.is_absolute() or ".." in p.parts or "\\" in str(shard):
        raise InvalidModel(f"{index}: weight_map names an unsafe shard path {shard!r}")
    return str(p)


def read_weight_map(path: Path, rel: str) -> dict[str, set[str]] | None:
    """shard (relative to the index's folder) -> the tensors the index assigns to it; None for
    an index without a weight_map where none is required."""
    doc = load_json(path, rel)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if weight_map is None and not rel.endswith(MAPPED_INDEXES):
        return None
    if not isinstance(weight_map, dict):
        raise InvalidModel(f"{rel}: no weight_map object")
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard_name(rel, shard), set()).add(tensor)
    return by_shard


def skipped_note(skip: Collection[str]) -> str | None:
    """The log line for FETCH_SKIP_FORMAT_CHECKS, or None when every check runs."""
    if not skip:
        return None
    names = ", ".join(f for f in FAMILIES if f in skip)
    return f"format checks turned off by FETCH_SKIP_FORMAT_CHECKS: {names}"


@contextmanager
def open_regular(path: Path, name: str) -> Iterator[tuple[int, int]]:
    """(fd, size) of a model file opened for its header check; a missing file or anything
    but a regular file is InvalidModel naming `name` (one rule for every header reader)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise InvalidModel(f"{name}: missing or not a file") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModel(f"{name}: not a regular file")
        yield fd, st.st_size
    finally:
        os.close(fd)
