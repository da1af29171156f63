"""DEST in a pod should be a mounted volume: a `volumeMount` typo makes the fetcher create the
directory on the container's root file system, which fills the node's ephemeral storage with
100 GB of weights and gets the pod evicted (issue 13)."""

from __future__ import annotations

import os
from pathlib import Path

from fetcher.observe import log


def warn_if_not_a_volume(dest: Path, root: Path = Path("/")) -> None:
    """Only for a DEST that does not exist yet: an existing one is the mount itself or was
    chosen on purpose, and a fetch there is a warm start."""
    if dest.exists() or dest.is_symlink():
        return
    parent = dest.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        same = os.stat(parent).st_dev == os.stat(root).st_dev
    except OSError:
        return
    if same:
        log.warning(
            "cache_not_a_volume",
            f"{dest} does not exist and would be created on the container's root file system "
            f"({parent} is not a mount): is the volumeMount's mountPath the same as "
            "MODEL_CACHE_DIR?",
            dest=str(dest),
        )
