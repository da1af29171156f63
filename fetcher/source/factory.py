"""Which control plane a run uses (see base.py for the two)."""

from __future__ import annotations

from fetcher.config import Config
from fetcher.source.base import ControlPlane
from fetcher.source.sigv4 import SignedSource


def open_source(cfg: Config) -> ControlPlane:
    """The light signer when the keys are given (or anonymous), else botocore's chain."""
    if cfg.anonymous or (cfg.access_key and cfg.secret_key):
        return SignedSource(cfg)
    # The one deliberate lazy import of the package: aiobotocore costs ~0.35 CPU-s per start
    # (base.py's docstring has the measurement), and a pod with static keys never needs it.
    from fetcher.source.boto import Source

    return Source(cfg)
