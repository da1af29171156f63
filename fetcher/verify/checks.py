"""The model as a server would load it: every format check of a model directory, in one call.

`check_model` is what `publish` (before any upload), `fetch` (before hand-off) and `verify` run;
`check_file` is what `fetch` runs on each file before its final rename. Each format's own rules
live beside it (`safetensors.py`, `gguf.py`, `formats.py` for JSON files and which family a
file is). Hashes are `hashes.py`'s.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from fetcher.verify.formats import check_json_file, family, read_weight_map
from fetcher.verify.safetensors import check_index, check_safetensors


def check_file(path: Path, rel: str, skip: Collection[str] = ()) -> None:
    """The header check of one file, by its name: what can be told of it alone, before it
    gets its final name. Split sets and weight maps need the others (check_model)."""
    kind = family(rel)
    if kind is None or kind in skip:
        return
    if kind == "safetensors":
        check_safetensors(path, rel)
    elif kind == "gguf":
        from fetcher.verify import gguf  # see _gguf_files

        gguf.check_split_keys(rel, gguf.read_header(path, rel))
    elif kind == "index":
        read_weight_map(path, rel)
    else:
        check_json_file(path, rel)


def check_model(model_dir: Path, files: Iterable[str], skip: Collection[str] = ()) -> None:
    """Check every listed file (paths relative to `model_dir`), then indexes and split sets;
    `skip` names families (formats.FAMILIES) left unchecked (FETCH_SKIP_FORMAT_CHECKS)."""
    files = list(files)
    for rel in files:
        if family(rel) not in (None, "gguf"):  # GGUF: read once, with the split sets, below
            check_file(model_dir / rel, rel, skip)
    if "index" not in skip:
        check_index(model_dir, files, skip)
    ggufs = [rel for rel in files if family(rel) == "gguf"]
    if ggufs and "gguf" not in skip:
        _gguf_files(model_dir, ggufs)


def _gguf_files(model_dir: Path, rels: list[str]) -> None:
    # Imported for GGUF models only: its dataclasses cost ~5 ms of every start (issue 14).
    from fetcher.verify.gguf import check_gguf_files

    check_gguf_files(model_dir, rels)
