"""The model as a server would load it: every format check of a model directory, in one call.

`check_model` is what `publish` (before any upload), `fetch` (before hand-off) and `verify` run;
each format's own rules live beside it (`safetensors.py`). Hashes are `hashes.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fetcher.verify.safetensors import check_index, check_safetensors


def check_model(model_dir: Path, files: Iterable[str]) -> None:
    """Check every listed `.safetensors` file (paths relative to `model_dir`), then the indexes."""
    files = list(files)
    for rel in files:
        if rel.endswith(".safetensors"):
            check_safetensors(model_dir / rel, rel)
    check_index(model_dir, files)
