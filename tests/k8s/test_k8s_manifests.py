"""The contract of issue 6 on the built manifests: what no schema validator knows.

`make k8s-check` validates the core kinds against the Kubernetes schemas; these tests assert
the KServe, Prometheus Operator and platform conventions on the same `kubectl kustomize`
output, field by field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .manifests import (
    FETCHER_IMAGE,
    K8S,
    KUSTOMIZATIONS,
    OVERLAYS,
    Doc,
    argv_of,
    build,
    fetcher_containers,
    fetcher_entrypoint,
    only,
    pod_labels,
    pod_spec,
)

POD_ENV = ("MINIO_ENDPOINT", "MINIO_BUCKET", "MODEL_PREFIX", "MODEL_CACHE_DIR")
WORKLOADS = [o for o in OVERLAYS if o != "kserve-storage-initializer"]


def env_of(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_builds(built: dict[str, list[Doc]], kustomization: str) -> None:
    assert built[kustomization], f"{kustomization} builds to nothing"


def test_overlays_are_the_six_deployment_situations() -> None:
    assert set(OVERLAYS) == {
        "kserve-storage-initializer",
        "kserve-inferenceservice",
        "vllm-deployment",
        "llamacpp-deployment",
        "vllm-native-sidecar",
        "node-prewarm",
    }


def test_each_overlay_runs_model_fetcher(built: dict[str, list[Doc]]) -> None:
    found = {
        o: [c["name"] for _, c in fetcher_containers(built[f"overlays/{o}"])] for o in OVERLAYS
    }
    assert found == {
        "kserve-storage-initializer": ["storage-initializer"],
        "kserve-inferenceservice": ["model-fetcher"],
        "vllm-deployment": ["model-fetcher"],
        "llamacpp-deployment": ["model-fetcher"],
        "vllm-native-sidecar": ["model-fetcher"],
        "node-prewarm": ["prewarm-mistral-24b", "prewarm-llama-8b"],
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fetcher_containers_are_locked_down(built: dict[str, list[Doc]], overlay: str) -> None:
    for _, c in fetcher_containers(built[f"overlays/{overlay}"]):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError", c["name"]
        assert c["image"].startswith(FETCHER_IMAGE + ":"), c["name"]
        assert c["imagePullPolicy"] == "IfNotPresent", c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fetcher_resources_are_bounded_by_concurrency(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    # Memory is FETCH_CONCURRENCY x 1 MiB buffers + ~80 MiB interpreter: 256Mi fits 16 in
    # flight with room to spare; the limit covers cgroup v1 page cache (see the manifests).
    for _, c in fetcher_containers(built[f"overlays/{overlay}"]):
        res = c["resources"]
        assert res["requests"]["memory"] == "256Mi", c["name"]
        assert res["limits"]["memory"] == "512Mi", c["name"]
        assert {"cpu"} <= res["requests"].keys() and {"cpu"} <= res["limits"].keys(), c["name"]
        concurrency = int(env_of(c).get("FETCH_CONCURRENCY", "16"))
        assert concurrency * 1 + 80 < 256, c["name"]


def test_all_containers_drop_privileges(built: dict[str, list[Doc]]) -> None:
    for overlay in WORKLOADS:
        for doc in built[f"overlays/{overlay}"]:
            if doc["kind"] not in ("Deployment", "DaemonSet", "InferenceService"):
                continue
            spec = pod_spec(doc)
            assert spec["automountServiceAccountToken"] is False, overlay
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, (overlay, c["name"])
                assert sc["readOnlyRootFilesystem"] is True, (overlay, c["name"])
                assert "ALL" in sc["capabilities"]["drop"], (overlay, c["name"])
                assert c.get("resources", {}).get("limits"), (overlay, c["name"])


# Volume types the "restricted" Pod Security Standard admits.
RESTRICTED_VOLUMES = {"configMap", "emptyDir", "persistentVolumeClaim", "projected", "secret",
                      "downwardAPI", "csi", "ephemeral"}  # fmt: skip


@pytest.mark.parametrize("overlay", [w for w in WORKLOADS if w != "node-prewarm"])
def test_serving_pods_meet_the_restricted_pod_security_standard(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """So they run in a namespace labelled pod-security.kubernetes.io/enforce=restricted."""
    for workload, _ in fetcher_containers(built[f"overlays/{overlay}"]):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc.get("runAsUser", 1) != 0 and sc.get("runAsNonRoot", True), c["name"]
            assert "hostPort" not in str(c.get("ports", [])), c["name"]


def test_cluster_storage_container_follows_kserve(built: dict[str, list[Doc]]) -> None:
    docs = built["overlays/kserve-storage-initializer"]
    csc = only(docs, "ClusterStorageContainer")
    assert csc["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert "namespace" not in csc["metadata"], "ClusterStorageContainer is cluster-scoped"
    spec = csc["spec"]
    assert spec["workloadType"] == "initContainer"
    for prefix in ("s3://", "models:/", "model-registry://"):  # registry URIs: issue 15
        assert {"prefix": prefix} in spec["supportedUriFormats"]
    container = spec["container"]
    # KServe requires the name, and passes `SRC_URI DEST` itself: args would be replaced and
    # a command would bypass the image's entrypoint.
    assert container["name"] == "storage-initializer"
    assert "args" not in container and "command" not in container
    assert fetcher_entrypoint() == ["model-fetcher"]
    # Endpoint and credentials come from what KServe injects, never from the container spec.
    env = env_of(container)
    assert not {"MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & env.keys()
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_inferenceservice_follows_the_platform_pattern(built: dict[str, list[Doc]]) -> None:
    docs = built["overlays/kserve-inferenceservice"]
    isvc = only(docs, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert "model" not in predictor and "storageUri" not in str(predictor), (
        "no storageUri: the init container fetches, KServe must not inject its own"
    )
    (init,) = predictor["initContainers"]
    env = env_of(init)
    assert env["MINIO_ENDPOINT"].startswith("https://model-storage-hl.model-storage.svc")
    assert env["MINIO_BUCKET"] == "llm-models"
    assert env["MODEL_PREFIX"] == "mistral-24b-full/fp16-2501/"
    assert env["MODEL_CACHE_DIR"] == "/model-cache"
    for name in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        assert env[name] == {"secretKeyRef": {"name": "minio-credentials", "key": name}}
    assert argv_of(init) == ["model-fetcher", "fetch"]
    (server,) = predictor["containers"]
    assert server["name"] == "kserve-container"
    assert server["image"].startswith("vllm/vllm-openai:")
    assert server["command"] == ["vllm", "serve"] and server["args"][0] == "/model-cache"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor[
        "tolerations"
    ]
    assert_mounts_cache(predictor, init, server)
    pvc = only(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "model-cache"


def assert_mounts_cache(spec: Doc, fetcher: Doc, server: Doc) -> None:
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "model-cache"
    mounts = {m["name"]: m for m in fetcher["volumeMounts"]}
    assert mounts["model-cache"]["mountPath"] == env_of(fetcher)["MODEL_CACHE_DIR"]
    assert not mounts["model-cache"].get("readOnly", False)
    served = {m["name"]: m for m in server["volumeMounts"]}["model-cache"]
    assert served["mountPath"] == "/model-cache" and served["readOnly"] is True
    # fsGroup makes the PVC writable for UID 1000 without chowning 100 GB on every start.
    assert spec["securityContext"]["fsGroup"] == 1000
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']} mounts undefined volume {m['name']}"


def test_vllm_deployment(built: dict[str, list[Doc]]) -> None:
    docs = built["overlays/vllm-deployment"]
    deploy = only(docs, "Deployment")
    spec = pod_spec(deploy)
    (init,) = spec["initContainers"]
    (server,) = spec["containers"]
    assert "restartPolicy" not in init, "a plain init container: fetch, verify, exit 0"
    assert argv_of(init) == ["model-fetcher", "fetch"]
    assert {k for k in env_of(init)} >= {*POD_ENV, "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert_mounts_cache(spec, init, server)
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}, "RWO cache: one pod at a time"
    template_annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert template_annotations["prometheus.io/scrape"] == "true"
    assert_ports_resolve(docs, deploy)


def test_llamacpp_deployment(built: dict[str, list[Doc]]) -> None:
    """Issue 16: llama-server on a GGUF file that the init container fetched and checked."""
    docs = built["overlays/llamacpp-deployment"]
    deploy = only(docs, "Deployment")
    spec = pod_spec(deploy)
    (init,) = spec["initContainers"]
    (server,) = spec["containers"]
    assert "restartPolicy" not in init, "a plain init container: fetch, verify, exit 0"
    assert argv_of(init) == ["model-fetcher", "fetch"]
    assert {k for k in env_of(init)} >= {*POD_ENV, "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert server["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    model = server["args"][server["args"].index("-m") + 1]
    cache = env_of(init)["MODEL_CACHE_DIR"]
    assert model.startswith(cache.rstrip("/") + "/") and model.endswith(".gguf")
    assert "--metrics" in server["args"] and "--port=8080" in server["args"]
    assert server["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert_mounts_cache(spec, init, server)
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}, "RWO cache: one pod at a time"
    assert_ports_resolve(docs, deploy)


def assert_ports_resolve(docs: list[Doc], workload: Doc) -> None:
    """The Service's targetPort and the PodMonitor's ports name ports of the pod."""
    spec = pod_spec(workload)
    ports = {
        p["name"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for p in c.get("ports", [])
    }
    labels = pod_labels(workload)
    monitor = only(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoints = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints == {"http", "fetch-metrics"} and endpoints <= ports
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


def test_podmonitor_of_the_inferenceservice(built: dict[str, list[Doc]]) -> None:
    docs = built["overlays/kserve-inferenceservice"]
    assert_ports_resolve(docs, only(docs, "InferenceService"))


def test_native_sidecar_gates_vllm_on_readyz(built: dict[str, list[Doc]]) -> None:
    docs = built["overlays/vllm-native-sidecar"]
    deploy = only(docs, "Deployment")
    spec = pod_spec(deploy)
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert argv_of(sidecar) == ["model-fetcher", "sidecar"]
    port = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["fetch-metrics"]
    assert env_of(sidecar)["METRICS_PORT"] == str(port)
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "fetch-metrics"}
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The startup probe must outlast a long fetch, or the kubelet kills the sidecar mid-way.
    startup = sidecar["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 6 * 3600
    assert_mounts_cache(spec, sidecar, spec["containers"][0])
    assert_ports_resolve(docs, deploy)


def test_node_prewarm_daemonset(built: dict[str, list[Doc]]) -> None:
    ds = only(built["overlays/node-prewarm"], "DaemonSet")
    spec = pod_spec(ds)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["node-cache"]["hostPath"]["path"] == "/var/lib/model-cache"
    fetchers = [c for _, c in fetcher_containers([ds])]
    assert len(fetchers) >= 2, "a list of models"
    dirs, ports, prefixes = set(), set(), set()
    for c in fetchers:
        env = env_of(c)
        assert argv_of(c) == ["model-fetcher", "sidecar"]
        assert env["MODEL_CACHE_DIR"].startswith("/var/lib/model-cache/")
        assert env["MODEL_CACHE_DIR"].rstrip("/").endswith(env["MODEL_PREFIX"].rstrip("/"))
        dirs.add(env["MODEL_CACHE_DIR"])
        prefixes.add(env["MODEL_PREFIX"])
        ports.add(env["METRICS_PORT"])
        assert [p["containerPort"] for p in c["ports"]] == [int(env["METRICS_PORT"])]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert len(dirs) == len(ports) == len(prefixes) == len(fetchers), "one dir and port each"
    # The only root container: it chowns the hostPath for UID 1000 and nothing else.
    (prep,) = spec["initContainers"]
    assert prep["command"][0] == "chown"
    assert prep["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert prep["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", WORKLOADS)
def test_networkpolicy_covers_the_fetching_pods(built: dict[str, list[Doc]], overlay: str) -> None:
    docs = built[f"overlays/{overlay}"]
    policy = only(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Egress"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload, _ in fetcher_containers(docs):
        assert selector.items() <= pod_labels(workload).items(), workload["metadata"]["name"]
    rules = policy["spec"]["egress"]
    assert len(rules) == 2, "MinIO and DNS, nothing else"
    ports = [{(p["protocol"], p["port"]) for p in r["ports"]} for r in rules]
    assert {("TCP", 9000)} in ports and {("UDP", 53), ("TCP", 53)} in ports
    for rule in rules:
        for peer in rule["to"]:
            assert "ipBlock" not in peer and peer["podSelector"]["matchLabels"]


def test_example_custom_model_reaches_every_fetcher(built: dict[str, list[Doc]]) -> None:
    docs = built["examples/custom-model"]
    ((workload, fetcher),) = fetcher_containers(docs)
    assert fetcher["image"] == "harbor.internal.example/ml/model-fetcher:0.1.0"
    env = env_of(fetcher)
    assert env["MODEL_PREFIX"] == "llama-3.1-8b-instruct/bf16/"
    # Merged by name: the rest of the pod env is untouched.
    assert env["MINIO_BUCKET"] == "llm-models" and "MINIO_SECRET_KEY" in env
    (server,) = pod_spec(workload)["containers"]
    assert "--served-model-name=llama-3.1-8b-instruct" in server["args"]
    assert only(docs, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] == "40Gi"


def test_example_kserve_custom_model(built: dict[str, list[Doc]]) -> None:
    docs = built["examples/kserve-custom-model"]
    ((isvc, fetcher),) = fetcher_containers(docs)
    assert env_of(fetcher)["MODEL_PREFIX"] == "llama-3.1-8b-instruct/bf16/"
    args = isvc["spec"]["predictor"]["containers"][0]["args"]
    assert "--served-model-name=llama-3.1-8b-instruct" in args


def test_example_storage_uri_is_served_by_model_fetcher(built: dict[str, list[Doc]]) -> None:
    isvc = only(built["examples/kserve-storage-uri"], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    uri = predictor["model"]["storageUri"]
    csc = only(built["overlays/kserve-storage-initializer"], "ClusterStorageContainer")
    assert any(uri.startswith(f["prefix"]) for f in csc["spec"]["supportedUriFormats"])
    accounts = [d for d in built["secret-template"] if d["kind"] == "ServiceAccount"]
    (account,) = [a for a in accounts if a["metadata"]["name"] == predictor["serviceAccountName"]]
    secrets = {d["metadata"]["name"]: d for d in built["secret-template"] if d["kind"] == "Secret"}
    for ref in account["secrets"]:
        annotations = secrets[ref["name"]]["metadata"]["annotations"]
        assert annotations["serving.kserve.io/s3-endpoint"].startswith("model-storage-hl.")


def test_example_shared_cache_uses_the_lease(built: dict[str, list[Doc]]) -> None:
    docs = built["examples/shared-cache-rwx"]
    ((deploy, fetcher),) = fetcher_containers(docs)
    assert deploy["spec"]["replicas"] > 1
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert only(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    env = env_of(fetcher)
    # The lease names its holder by pod: every replica must have its own identity.
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert int(env["FETCH_LEASE_TTL"]) > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_override_reaches_every_fetcher_container(tmp_path: Path, overlay: str) -> None:
    """A user's `images:` reaches the ClusterStorageContainer too (kustomizeconfig.yaml)."""
    image = {"name": FETCHER_IMAGE, "newName": "harbor.example/ml/model-fetcher", "newTag": "9"}
    resource = os.path.relpath(K8S / "overlays" / overlay, tmp_path)
    doc = {"resources": [resource], "images": [image]}
    (tmp_path / "kustomization.yaml").write_text(json.dumps(doc))
    found = list(fetcher_containers(build(str(tmp_path))))
    assert found and {c["image"] for _, c in found} == {"harbor.example/ml/model-fetcher:9"}


def test_workloads_share_one_namespace(built: dict[str, list[Doc]]) -> None:
    for overlay in WORKLOADS:
        namespaces = {d["metadata"].get("namespace") for d in built[f"overlays/{overlay}"]}
        assert namespaces == {"llm-serving"}, overlay


def test_secret_template_holds_placeholders_only(built: dict[str, list[Doc]]) -> None:
    secrets = [d for d in built["secret-template"] if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "minio-credentials",
        "kserve-minio-credentials",
    }
    for secret in secrets:
        assert "data" not in secret
        assert set(secret["stringData"].values()) == {"REPLACE_ME"}
    keys = set(
        only([s for s in secrets if s["metadata"]["name"] == "minio-credentials"], "Secret")[
            "stringData"
        ]
    )
    # The keys the workloads' secretKeyRefs name exist in the template.
    for overlay in WORKLOADS:
        for _, c in fetcher_containers(built[f"overlays/{overlay}"]):
            for ref in (
                v["secretKeyRef"]
                for v in env_of(c).values()
                if isinstance(v, dict)
                if "secretKeyRef" in v
            ):
                assert ref["name"] == "minio-credentials" and ref["key"] in keys
    # No overlay ships a Secret: applying one must never overwrite real credentials.
    for overlay in OVERLAYS:
        assert not [d for d in built[f"overlays/{overlay}"] if d["kind"] == "Secret"]
