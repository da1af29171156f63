"""Pickle weights run code when they are loaded (`torch.load` of a `.bin`): a fetch names them
in a warning, FETCH_REFUSE_PICKLE=true refuses them, and under a trust policy they pass only
because the signature covers them (issue 12)."""

from __future__ import annotations

from collections.abc import Iterable

from fetcher.errors import UnsafeKey
from fetcher.observe import log

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def pickle_files(rels: Iterable[str]) -> list[str]:
    return sorted(rel for rel in rels if rel.lower().endswith(PICKLE_SUFFIXES))


def refuse_pickles(rels: Iterable[str]) -> None:
    """FETCH_REFUSE_PICKLE=true: before any byte is requested."""
    found = pickle_files(rels)
    if found:
        raise UnsafeKey(
            f"refusing {len(found)} pickle weight files ({', '.join(found[:3])}): they can run "
            "code when loaded (FETCH_REFUSE_PICKLE=true; exclude them with FETCH_EXCLUDE)"
        )


def warn_pickles(rels: Iterable[str], signed: bool) -> None:
    found = pickle_files(rels)
    if not found:
        return
    how = "signed, but" if signed else "not signed, and"
    log.warning(
        "pickle_weights",
        f"{len(found)} pickle weight files ({', '.join(found[:3])}) are {how} can run code "
        "when loaded; prefer safetensors (FETCH_REFUSE_PICKLE=true refuses them)",
        files=found[:20],
    )
