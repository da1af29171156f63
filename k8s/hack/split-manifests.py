"""Split `kubectl kustomize` output for the checks of `make k8s-check`.

usage: split-manifests.py OUT_DIR BUILT.yaml...

Writes every core-API document to OUT_DIR/core/ (for `kubernetes-validate --strict`) and the
PrometheusRule's rule groups to OUT_DIR/rules/ (for `promtool check rules`). Custom resources
of the kinds listed below are left to tests/k8s, which asserts their contract; any other kind
fails here, so that a typo in an apiVersion cannot slip through as "no schema, skipped".
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

CORE_GROUPS = {"", "apps", "batch", "networking.k8s.io", "policy", "rbac.authorization.k8s.io"}
CUSTOM_KINDS = {
    ("serving.kserve.io", "ClusterStorageContainer"),
    ("serving.kserve.io", "InferenceService"),
    ("monitoring.coreos.com", "PodMonitor"),
    ("monitoring.coreos.com", "PrometheusRule"),
}


def main(out: Path, built: list[Path]) -> int:
    (out / "core").mkdir(parents=True, exist_ok=True)
    (out / "rules").mkdir(parents=True, exist_ok=True)
    problems = []
    for path in built:
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            group = doc["apiVersion"].rpartition("/")[0]
            name = f"{path.stem}-{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}"
            if group in CORE_GROUPS:
                (out / "core" / f"{name}.yaml").write_text(yaml.safe_dump(doc))
            elif (group, doc["kind"]) not in CUSTOM_KINDS:
                problems.append(f"{path}: unexpected {doc['apiVersion']} {doc['kind']}")
            if doc["kind"] == "PrometheusRule":
                rules = {"groups": doc["spec"]["groups"]}
                (out / "rules" / f"{doc['metadata']['name']}.rules.yaml").write_text(
                    yaml.safe_dump(rules, sort_keys=False)
                )
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
