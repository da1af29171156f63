"""Fixtures of tests/k8s: every kustomization built once per session."""

from __future__ import annotations

import pytest

from .manifests import KUSTOMIZATIONS, Doc, build


@pytest.fixture(scope="session")
def built() -> dict[str, list[Doc]]:
    return {k: build(k) for k in KUSTOMIZATIONS}
