"""Run the manifests' own command lines against a real S3 server (issue 6).

For every container that runs model-fetcher in the built overlays, the test takes its command
(or the image ENTRYPOINT), args and env exactly as `kubectl kustomize` renders them and stands
in for the kubelet and KServe only where a cluster would:

- `secretKeyRef` of minio-credentials -> the test server's keys; `fieldRef` metadata.name ->
  a pod name; the MinIO service's host:port -> a local SeaweedFS serving TLS with a test CA;
- each volumeMount's mountPath -> a temporary directory (shared by the containers of a pod);
  the kube-root-ca.crt ConfigMap volume holds the test CA, as a cluster's holds its CA;
- METRICS_PORT and the container port the probes name -> a free local port;
- /dev/termination-log -> FETCH_TERMINATION_LOG in the temporary directory;
- the ClusterStorageContainer gets what KServe injects from the Secret template's annotations,
  and `SRC_URI DEST` appended as its arguments.

Then it asserts the model lands byte-identical, exit 0, and for sidecars that the probes'
paths answer 200 and SIGTERM ends the process with 0.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gguf
import pytest

from devtools.sample_gguf import write_gguf
from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer, boto3_client, free_port, start_temporary
from fetcher.cache.layout import META_DIR

from .manifests import (
    CONTAINER,
    KUSTOMIZATIONS,
    Doc,
    Dockerfile,
    argv_of,
    build,
    fetcher_containers,
    only,
)

CLUSTER_MINIO = "model-storage-hl.model-storage.svc.cluster.local:9000"
KSERVE_MOUNT = "/mnt/models"  # where KServe mounts the model volume of its initializer
VENV_BIN = Path(sys.executable).parent


# ---- the S3 side: SeaweedFS with TLS from a test CA, and a small model per prefix -----------


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(d: Path) -> Tls:
    """A CA and a server certificate for 127.0.0.1, as the MinIO operator would issue."""
    d.mkdir(parents=True, exist_ok=True)
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl is needed to make the test CA", pytrace=False)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")  # fmt: skip
    return Tls(d / "ca.crt", d / "server.crt", d / "server.key")


@dataclass
class S3:
    server: SeaweedServer
    tls: Tls
    models: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)

    def endpoint(self, scheme: str) -> str:
        port = self.server.ports["s3.port.https" if scheme == "https" else "s3.port"]
        return f"{scheme}://127.0.0.1:{port}"


def all_models() -> set[tuple[str, str]]:
    """(bucket, prefix) of every fetcher container in overlays and examples, and storageUris."""
    found = set()
    for k in KUSTOMIZATIONS:
        docs = build(k)
        for doc in docs:
            if doc["kind"] != "InferenceService":
                continue
            uri = doc["spec"]["predictor"].get("model", {}).get("storageUri", "")
            if uri.startswith("s3://"):
                bucket, _, prefix = uri.removeprefix("s3://").partition("/")
                found.add((bucket, prefix))
        for _, c in fetcher_containers(docs):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "MODEL_PREFIX" in env:  # not the storage initializer: KServe passes its URI
                found.add((env["MINIO_BUCKET"], env["MODEL_PREFIX"]))
    return found


def gguf_models() -> dict[tuple[str, str], str]:
    """(bucket, prefix) -> the file a llama-server container opens (`-m`), relative to the
    fetcher's MODEL_CACHE_DIR: those prefixes hold a GGUF model (issue 16)."""
    found = {}
    for k in KUSTOMIZATIONS:
        for workload, fetcher in fetcher_containers(build(k)):
            env = {e["name"]: e.get("value") for e in fetcher.get("env", [])}
            spec = workload["spec"]["template"]["spec"] if "template" in workload["spec"] else {}
            for c in spec.get("containers", []):
                args = c.get("args", [])
                if "-m" in args and "MODEL_PREFIX" in env:
                    model = args[args.index("-m") + 1]
                    rel = model.removeprefix(env["MODEL_CACHE_DIR"].rstrip("/") + "/")
                    found[(env["MINIO_BUCKET"], env["MODEL_PREFIX"])] = rel
    return found


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    tls = make_tls(tmp_path_factory.mktemp("tls"))
    server = start_temporary(tls=(tls.cert, tls.key))
    try:
        yield upload_models(S3(server, tls), tmp_path_factory.mktemp("models"))
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def upload_models(s3: S3, scratch: Path) -> S3:
    client: Any = boto3_client(s3.server)
    ggufs = gguf_models()
    for seed, (bucket, prefix) in enumerate(sorted(all_models())):
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=bucket)
        local = scratch / f"m{seed}"
        if (bucket, prefix) in ggufs:
            write_gguf(local / ggufs[(bucket, prefix)], rows=256, seed=seed)
        else:
            write_sample_model(local, 3 << 20, shards=2, seed=seed)
        files = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
        for rel, data in files.items():
            client.put_object(Bucket=bucket, Key=prefix + rel, Body=data)
        # A sibling version whose name extends this one: fp16-2501 must not match fp16-25010.
        client.put_object(Bucket=bucket, Key=prefix.rstrip("/") + "0/decoy.bin", Body=b"x")
        s3.models[(bucket, prefix)] = files
    return s3


# ---- standing in for the kubelet ------------------------------------------------------------


@dataclass
class Pod:
    """One pod's worth of substitutions: volumes, ports, the termination log."""

    name: str
    spec: Doc
    root: Path
    s3: S3
    ports: dict[int, int] = field(default_factory=dict)  # manifest port -> local port

    def volume_dir(self, volume: str) -> Path:
        path = self.root / "volumes" / volume
        path.mkdir(parents=True, exist_ok=True)
        source = {v["name"]: v for v in self.spec.get("volumes", [])}.get(volume, {})
        if source.get("configMap", {}).get("name") == "kube-root-ca.crt":
            shutil.copy(self.s3.tls.ca, path / "ca.crt")
        return path

    def mounts(self, container: Doc) -> dict[str, Path]:
        mounts = {}
        for m in container.get("volumeMounts", []):
            assert "subPath" not in m, "the test maps whole volumes only"
            mounts[m["mountPath"]] = self.volume_dir(m["name"])
        return mounts

    def local_port(self, port: int) -> int:
        return self.ports.setdefault(port, free_port())


def rewrite_path(value: str, mounts: dict[str, Path]) -> str:
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")) :]
    return value


def rewrite_endpoint(value: str, s3: S3) -> str:
    """The MinIO service's address -> the local server, same scheme (with or without one)."""
    if "://" not in value:
        assert value == CLUSTER_MINIO, value
        return urlsplit(s3.endpoint("https")).netloc
    url = urlsplit(value)
    assert url.netloc == CLUSTER_MINIO, f"unexpected endpoint {value}"
    return urlunsplit(url._replace(netloc=urlsplit(s3.endpoint(url.scheme)).netloc))


def resolve_env(pod: Pod, container: Doc, mounts: dict[str, Path]) -> dict[str, str]:
    creds = {"MINIO_ACCESS_KEY": pod.s3.server.access_key,
             "MINIO_SECRET_KEY": pod.s3.server.secret_key}  # fmt: skip
    env = {}
    for item in container.get("env", []):
        name, source = item["name"], item.get("valueFrom")
        if source is None:
            value = item["value"]
        elif "secretKeyRef" in source:
            assert source["secretKeyRef"]["name"] == "minio-credentials", source
            value = creds[source["secretKeyRef"]["key"]]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            value = pod.name
        else:
            raise AssertionError(f"{container['name']}: no stand-in for {name}: {source}")
        if name in ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL", "S3_ENDPOINT"):
            value = rewrite_endpoint(value, pod.s3)
        if name == "METRICS_PORT":
            value = str(pod.local_port(int(value)))
        env[name] = rewrite_path(value, mounts)
    return env


def kserve_injected_env(s3: S3) -> list[Doc]:
    """What KServe's credential builder injects from the annotated Secret of the template."""
    secret = next(
        d for d in build("secret-template") if d["metadata"]["name"] == "kserve-minio-credentials"
    )
    ann = {
        k.removeprefix("serving.kserve.io/"): v
        for k, v in secret["metadata"]["annotations"].items()
    }
    scheme = "https" if ann["s3-usehttps"] == "1" else "http"
    keys = {
        "AWS_ACCESS_KEY_ID": s3.server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.server.secret_key,
    }
    assert set(secret["stringData"]) == set(keys)
    injected = {
        "AWS_ENDPOINT_URL": f"{scheme}://{ann['s3-endpoint']}",
        "S3_ENDPOINT": ann["s3-endpoint"],
        "S3_USE_HTTPS": ann["s3-usehttps"],
        "S3_VERIFY_SSL": ann["s3-verifyssl"],
        "AWS_CA_BUNDLE": ann["s3-cabundle"],
        "AWS_REGION": ann["s3-region"],
        **keys,
    }
    return [{"name": k, "value": v} for k, v in injected.items()]


@dataclass
class Run:
    argv: list[str]
    env: dict[str, str]
    dest: Path
    model: dict[str, bytes]
    termination_log: Path
    secret: str


def prepare(pod: Pod, container: Doc, extra_args: list[str] | None = None) -> Run:
    mounts = pod.mounts(container)
    env = resolve_env(pod, container, mounts)
    argv = [rewrite_path(a, mounts) for a in [*argv_of(container), *(extra_args or [])]]
    assert argv[0] == "model-fetcher", argv
    argv[0] = str(VENV_BIN / "model-fetcher")  # the console script the image installs
    termination_log = pod.root / f"termination-log-{container['name']}"
    base = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(pod.root / "home")}
    env = {**base, **env, "FETCH_TERMINATION_LOG": str(termination_log)}
    if extra_args:  # KServe form: s3://bucket/prefix/ DEST
        bucket, _, prefix = extra_args[0].removeprefix("s3://").partition("/")
        dest = Path(argv[-1])
    else:
        bucket, prefix, dest = (
            env["MINIO_BUCKET"],
            env["MODEL_PREFIX"],
            Path(env["MODEL_CACHE_DIR"]),
        )
    model = pod.s3.models[(bucket, prefix)]
    return Run(argv, env, dest, model, termination_log, pod.s3.server.secret_key)


def model_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and META_DIR not in p.relative_to(root).parts
    }


def assert_landed(run: Run, out: str) -> None:
    assert model_tree(run.dest) == run.model, out
    assert run.secret not in out, "a credential was printed"
    # On success the termination log says what is served (issue 15), in one line.
    served = run.termination_log.read_text()
    assert served.startswith("serving s3://") and served.count("\n") == 1, served


def run_to_completion(run: Run) -> None:
    proc = subprocess.run(run.argv, env=run.env, capture_output=True, text=True, timeout=180)
    out = f"{run.argv}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, out
    assert_landed(run, out)


# ---- sidecars --------------------------------------------------------------------------------


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def probe_url(pod: Pod, container: Doc, probe: str) -> str:
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[port]
    return f"http://127.0.0.1:{pod.local_port(port)}{get['path']}"


@dataclass
class Sidecar:
    container: Doc
    run: Run
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_sidecars(pod: Pod, containers: list[Doc]) -> None:
    """Start every sidecar of the pod together, wait for its probes, then SIGTERM each."""
    sidecars = []
    try:
        for c in containers:
            run = prepare(pod, c)
            log = pod.root / f"{c['name']}.log"
            with log.open("wb") as out:  # a file, not a pipe: nobody reads while it runs
                proc = subprocess.Popen(run.argv, env=run.env, stdout=out, stderr=out)
            sidecars.append(Sidecar(c, run, proc, log))
        for sc in sidecars:
            gate = "startupProbe" if "startupProbe" in sc.container else "readinessProbe"
            wait_for_200(probe_url(pod, sc.container, gate), sc)
            for probe in ("readinessProbe", "livenessProbe"):
                assert http_status(probe_url(pod, sc.container, probe)) == 200, probe
            metrics = f"http://127.0.0.1:{pod.local_port(manifest_port(sc.container))}/metrics"
            assert http_status(metrics) == 200
        for sc in sidecars:
            sc.proc.send_signal(signal.SIGTERM)
            code = sc.proc.wait(timeout=30)
            assert code == 0, f"{sc.container['name']} after SIGTERM: {code}\n{sc.output()}"
            assert_landed(sc.run, sc.output())
    finally:
        for sc in sidecars:
            if sc.proc.poll() is None:
                sc.proc.kill()
                sc.proc.wait()


def manifest_port(container: Doc) -> int:
    value = next(e["value"] for e in container["env"] if e["name"] == "METRICS_PORT")
    return int(value)


def wait_for_200(url: str, sidecar: Sidecar, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sidecar.proc.poll() is not None:
            code = sidecar.proc.returncode
            pytest.fail(f"sidecar exited with {code} before {url} was 200:\n{sidecar.output()}")
        if http_status(url) == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout:.0f}s:\n{sidecar.output()}")


# ---- the tests --------------------------------------------------------------------------------


def new_pod(workload: Doc, s3: S3, tmp_path: Path) -> Pod:
    spec = (
        workload["spec"]["predictor"]
        if workload["kind"] == "InferenceService"
        else (workload["spec"]["template"]["spec"])
    )
    return Pod(f"{workload['metadata']['name']}-7d9f-x2k4q", spec, tmp_path, s3)


@pytest.mark.parametrize(
    "kustomization",
    [
        "overlays/kserve-inferenceservice",
        "overlays/vllm-deployment",
        "overlays/llamacpp-deployment",
        "examples/custom-model",
        "examples/kserve-custom-model",
    ],
)
def test_init_container_fetches_the_model(s3: S3, tmp_path: Path, kustomization: str) -> None:
    ((workload, container),) = fetcher_containers(build(kustomization))
    pod = new_pod(workload, s3, tmp_path)
    run = prepare(pod, container)
    run_to_completion(run)
    # A restarted pod finds the cache warm and succeeds again.
    run_to_completion(run)


def test_llamacpp_init_container_fetches_the_file_llama_server_opens(
    s3: S3, tmp_path: Path
) -> None:
    """overlays/llamacpp-deployment: after the init container, `-m` names a GGUF on the
    shared volume that llama.cpp's reader (gguf.GGUFReader, the serving stand-in) opens."""
    ((workload, fetcher),) = fetcher_containers(build("overlays/llamacpp-deployment"))
    pod = new_pod(workload, s3, tmp_path)
    run_to_completion(prepare(pod, fetcher))
    (server,) = workload["spec"]["template"]["spec"]["containers"]
    model = Path(rewrite_path(server["args"][server["args"].index("-m") + 1], pod.mounts(server)))
    reader = gguf.GGUFReader(model)
    assert reader.tensors and reader.fields["general.architecture"].contents() == "llama"


def test_replicas_on_a_shared_cache_all_start(s3: S3, tmp_path: Path) -> None:
    """examples/shared-cache-rwx: every replica's init container, at once, on one volume."""
    ((workload, container),) = fetcher_containers(build("examples/shared-cache-rwx"))
    replicas = workload["spec"]["replicas"]
    runs, procs = [], []
    for i in range(replicas):
        pod = new_pod(workload, s3, tmp_path)  # same root: the volume is shared
        pod.name = f"{workload['metadata']['name']}-7d9f-{i:05d}"
        run = prepare(pod, container)
        runs.append(run)
        log = (tmp_path / f"replica-{i}.log").open("wb")
        with log:
            procs.append(subprocess.Popen(run.argv, env=run.env, stdout=log, stderr=log))
    codes = [p.wait(timeout=180) for p in procs]
    logs = [(tmp_path / f"replica-{i}.log").read_text() for i in range(replicas)]
    assert codes == [0] * replicas, "\n".join(logs)
    assert len({r.dest for r in runs}) == 1
    assert_landed(runs[0], "\n".join(logs))
    # The lease (POD_NAME as holder) makes it one download per cache, not per replica.
    done = [json.loads(ln) for log in logs for ln in log.splitlines() if '"event":"done"' in ln]
    assert len(done) == replicas
    assert sum(d["files_fetched"] for d in done) == len(runs[0].model), "\n".join(logs)


def test_kserve_storage_initializer_fetches_src_uri_to_dest(s3: S3, tmp_path: Path) -> None:
    csc = only(build("overlays/kserve-storage-initializer"), "ClusterStorageContainer")
    container = dict(csc["spec"]["container"])
    # KServe adds its credential env to the container and mounts the model volume.
    container["env"] = [*container.get("env", []), *kserve_injected_env(s3)]
    container["volumeMounts"] = [
        {"name": "kserve-provision-location", "mountPath": KSERVE_MOUNT},
        {"name": "cabundle-cert", "mountPath": "/etc/ssl/custom-certs"},
    ]
    pod = Pod("mistral-24b-predictor-6c5d-2fj8v", {"volumes": []}, tmp_path, s3)
    shutil.copy(s3.tls.ca, pod.volume_dir("cabundle-cert") / "cabundle.crt")
    isvc = only(build("examples/kserve-storage-uri"), "InferenceService")
    run = prepare(pod, container, [isvc["spec"]["predictor"]["model"]["storageUri"], KSERVE_MOUNT])
    run_to_completion(run)


def test_native_sidecar_becomes_ready_and_stops_on_sigterm(s3: S3, tmp_path: Path) -> None:
    ((workload, container),) = fetcher_containers(build("overlays/vllm-native-sidecar"))
    assert container["restartPolicy"] == "Always"
    run_sidecars(new_pod(workload, s3, tmp_path), [container])


def test_node_prewarm_fills_every_model(s3: S3, tmp_path: Path) -> None:
    found = list(fetcher_containers(build("overlays/node-prewarm")))
    pod = new_pod(found[0][0], s3, tmp_path)
    run_sidecars(pod, [c for _, c in found])
    cache = pod.volume_dir("node-cache")
    assert {p.parent.parent.name for p in cache.glob("*/*/config.json")} == {
        "mistral-24b-full",
        "llama-3.1-8b-instruct",
    }


def test_vllm_runtime_entrypoint_fetches_then_execs_vllm_serve(s3: S3, tmp_path: Path) -> None:
    """container/vllm-runtime.Dockerfile's ENTRYPOINT, with a stand-in `vllm` on PATH."""
    dockerfile = Dockerfile.read(CONTAINER / "vllm-runtime.Dockerfile")
    entrypoint = dockerfile.exec_form("ENTRYPOINT")
    cmd = dockerfile.exec_form("CMD")
    image_env = dict(
        kv.split("=", 1) for e in dockerfile.final_stage().all("ENV") for kv in e.split()
    )
    # The pod env of the plain Deployment's fetcher, as a Deployment of this image would set.
    ((workload, fetcher),) = fetcher_containers(build("overlays/vllm-deployment"))
    pod = new_pod(workload, s3, tmp_path)
    run = prepare(pod, fetcher)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "vllm-argv"
    fake = bindir / "vllm"
    fake.write_text(
        "#!/bin/sh\n"
        f'{{ echo "pid=$$"; for a in "$@"; do echo "arg=$a"; done; ls "$2"; }} > {record}\n'
    )
    fake.chmod(0o755)
    env = {**image_env, **run.env, "PATH": f"{bindir}:{VENV_BIN}:/usr/bin:/bin"}
    args = ["--served-model-name=mistral-24b", "--max-model-len", "4096"]
    proc = subprocess.run(
        [*entrypoint, *cmd, *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = record.read_text().splitlines()
    argv = [ln.removeprefix("arg=") for ln in lines if ln.startswith("arg=")]
    assert argv == ["serve", str(run.dest), *args]
    # vLLM started only after the model was in place.
    listed = {ln for ln in lines if not ln.startswith(("arg=", "pid="))}
    assert {"config.json"} <= listed
    assert model_tree(run.dest) == run.model
