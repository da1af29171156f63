"""Deploy by registry name or alias (issue 15), against a real MLflow tracking server and a
real SeaweedFS bucket with versioning on: `publish --register`, `models:/m@alias` and
`models:/m/N` resolved over MLflow's REST API, object versions pinned, and what was served
recorded (state, status, log, info metric, termination log)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer, free_port
from fetcher.verify.manifest import MANIFEST_NAME
from tests.faults.proxy import FaultProxy
from tests.helpers import BUCKET, Result, make_key, metric, pod_env, run_fetcher, tree
from tests.integration import mlflowserver

VERSIONED = "llm-versioned"
PART = 256 * 1024


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mlflowserver.MlflowServer]:
    server = mlflowserver.start(tmp_path_factory.mktemp("mlflow"), f"s3://{BUCKET}/mlflow/")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def versioned(s3: Any) -> str:
    """A bucket with S3 versioning enabled, as `mc version enable` leaves it."""
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=VERSIONED)
    s3.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    return VERSIONED


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two versions of one model: same file names, different bytes."""
    root = tmp_path_factory.mktemp("models")
    write_sample_model(root / "a", 1 << 20, shards=2, seed=11)
    write_sample_model(root / "b", 1 << 20, shards=2, seed=12)
    return root / "a", root / "b"


def name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def base_env(server: SeaweedServer, dest: Path, mlflow_url: str) -> dict[str, str]:
    env = pod_env(server, "", dest)
    for unused in ("MINIO_BUCKET", "MODEL_PREFIX"):
        env.pop(unused)
    return {**env, "MLFLOW_TRACKING_URI": mlflow_url, "FETCH_PART_SIZE": str(PART)}


def publish(server: SeaweedServer, local: Path, uri: str, mlflow_url: str, *flags: str) -> Result:
    env = base_env(server, local.parent / "unused", mlflow_url)
    res = run_fetcher(["publish", str(local), uri, *flags], env)
    assert res.code == 0, res.stderr
    return res


def fetch(server: SeaweedServer, uri: str, dest: Path, mlflow_url: str, **env: str) -> Result:
    return run_fetcher([uri, str(dest)], {**base_env(server, dest, mlflow_url), **env})


def set_alias(mlflow: mlflowserver.MlflowServer, model: str, alias: str, version: str) -> None:
    mlflow.api(
        "POST", "registered-models/alias", {"name": model, "alias": alias, "version": version}
    )


def status(server: SeaweedServer, dest: Path) -> dict[str, Any]:
    res = run_fetcher(["status", str(dest)], {"LOG_FORMAT": "json"})
    assert res.code == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


@pytest.fixture(scope="module")
def registered(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    versioned: str,
    models: tuple[Path, Path],
) -> tuple[str, str]:
    """Model `m` with versions 1 (a) and 2 (b) in the versioned bucket; alias champion -> 2."""
    model = name()
    for number, local in enumerate(models, 1):
        uri = f"s3://{versioned}/{model}/{number}/"
        res = publish(s3_server, local, uri, mlflow.url, "--register", model, "--alias", "champion")
        assert res.events("registered")[0]["version"] == str(number)
    return model, versioned


# --- MLflow ------------------------------------------------------------------------------------


def test_publish_register_tags_the_version_with_the_manifest_it_wrote(
    s3: Any, mlflow: mlflowserver.MlflowServer, registered: tuple[str, str]
) -> None:
    model, bucket = registered
    mv = mlflow.api("GET", f"model-versions/get?name={model}&version=2")["model_version"]
    assert mv["source"] == f"s3://{bucket}/{model}/2/"
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    body = s3.get_object(Bucket=bucket, Key=f"{model}/2/{MANIFEST_NAME}")["Body"].read()
    assert tags["manifest_sha256"] == hashlib.sha256(body).hexdigest()
    head = s3.head_object(Bucket=bucket, Key=f"{model}/2/{MANIFEST_NAME}")
    assert tags["manifest_version"] == head["VersionId"]
    alias = mlflow.api("GET", f"registered-models/alias?name={model}&alias=champion")
    assert alias["model_version"]["version"] == "2"


def test_fetch_by_alias_and_by_version_serves_each_versions_bytes(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    registered: tuple[str, str],
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    model, bucket = registered
    by_alias, by_version = tmp_path / "alias" / "cache", tmp_path / "version" / "cache"
    textfile = tmp_path / "metrics.prom"
    res = fetch(
        s3_server, f"models:/{model}@champion", by_alias, mlflow.url,
        METRICS_TEXTFILE=str(textfile),
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert tree(by_alias) == tree(models[1])
    res1 = fetch(s3_server, f"models:/{model}/1", by_version, mlflow.url)
    assert res1.code == 0, res1.stderr
    assert tree(by_version) == tree(models[0])

    chain = f"models:/{model}@champion -> version 2 -> s3://{bucket}/{model}/2/ -> manifest sha256:"
    assert res.events("resolved")[0]["msg"].startswith(chain.split(" -> manifest")[0])
    source = status(s3_server, by_alias)["source"]
    assert source["uri"] == f"models:/{model}@champion" and source["version"] == "2"
    assert source["chain"].startswith(chain), source
    assert source["chain"].endswith("object versions"), "the files are pinned by version"
    termination = (by_alias.parent / "termination-log").read_text()
    assert termination.strip() == f"serving {source['chain']}"
    digest = f"sha256:{source['manifest_sha256']}"
    labels = {"source": f"models:/{model}@champion", "version": "2", "digest": digest}
    assert metric(textfile, "model_fetcher_model_info", **labels) == 1
    # Every series is labelled with the URI, which stays put when the alias moves.
    assert metric(textfile, "model_fetcher_up", prefix=f"models:/{model}@champion") == 1


def test_an_alias_moved_is_fetched_at_the_next_start_and_an_unchanged_one_costs_no_get(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    registered: tuple[str, str],
    models: tuple[Path, Path],
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    model, _ = registered
    dest = tmp_path / "cache"
    alias = f"models:/{model}@stable"
    set_alias(mlflow, model, "stable", "2")
    port = int(mlflow.url.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as registry:  # counts the registry's requests
        first = fetch(s3_server, alias, dest, registry.endpoint, MINIO_ENDPOINT=proxy.endpoint)
        assert first.code == 0, first.stderr
        proxy.reset()
        registry.reset()
        warm = fetch(s3_server, alias, dest, registry.endpoint, MINIO_ENDPOINT=proxy.endpoint)
        assert warm.code == 0, warm.stderr
        assert registry.count() == 1, registry.requests  # the alias, answered with its source
        assert proxy.count("GET") == 1 and proxy.count(method="HEAD") == 0, proxy.requests
        assert "list-type" in proxy.requests[0].query, "the one S3 request is the LIST"
        assert warm.events("done")[0]["files_fetched"] == 0

    set_alias(mlflow, model, "stable", "1")
    moved = fetch(s3_server, alias, dest, mlflow.url, MINIO_ENDPOINT=proxy.endpoint)
    assert moved.code == 0, moved.stderr
    assert tree(dest) == tree(models[0])
    assert moved.events("done")[0]["files_fetched"] > 0
    assert status(s3_server, dest)["source"]["version"] == "1"


def test_registry_unreachable_serves_a_complete_cache_and_fails_an_empty_one(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    registered: tuple[str, str],
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    model, _ = registered
    uri, dest = f"models:/{model}@champion", tmp_path / "cache"
    assert fetch(s3_server, uri, dest, mlflow.url).code == 0
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = fetch(s3_server, uri, dest, down)
    assert res.code == 0, res.stderr
    assert res.events("source_unreachable"), res.stderr
    assert tree(dest) == tree(models[1])
    empty = fetch(s3_server, uri, tmp_path / "empty" / "cache", down)
    assert empty.code == 3, empty.stderr
    assert "MLflow registry" in empty.stderr and "incomplete" in empty.stderr


@pytest.mark.parametrize(
    ("suffix", "says"),
    [("@nosuch", "no alias 'nosuch'"), ("/99", "no version 99")],
    ids=["alias", "version"],
)
def test_an_unknown_alias_or_version_is_exit_3_naming_which(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    registered: tuple[str, str],
    tmp_path: Path,
    suffix: str,
    says: str,
) -> None:
    model, _ = registered
    res = fetch(s3_server, f"models:/{model}{suffix}", tmp_path / "cache", mlflow.url)
    assert res.code == 3, res.stderr
    assert says in res.stderr, res.stderr
    unknown = fetch(s3_server, "models:/no-such-model@champion", tmp_path / "c2", mlflow.url)
    assert unknown.code == 3 and "no-such-model" in unknown.stderr, unknown.stderr


def run_version(mlflow: mlflowserver.MlflowServer, model: str, artifact_root: str) -> str:
    """A version registered as MLflow's own client does: `runs:/<run>/model` of a run whose
    experiment keeps its artifacts at `artifact_root`; returns the run's artifact URI."""
    experiment = mlflow.api(
        "POST", "experiments/create", {"name": name(), "artifact_location": artifact_root}
    )["experiment_id"]
    info = mlflow.api("POST", "runs/create", {"experiment_id": experiment})["run"]["info"]
    mlflow.api("POST", "registered-models/create", {"name": model})
    source = f"runs:/{info['run_id']}/model"
    mlflow.api(
        "POST", "model-versions/create", {"name": model, "source": source, "run_id": info["run_id"]}
    )
    return str(info["artifact_uri"])


def test_a_version_in_mlflow_artifacts_is_a_configuration_error_with_the_fix(
    s3_server: SeaweedServer, mlflow: mlflowserver.MlflowServer, tmp_path: Path
) -> None:
    model = name()
    run_version(mlflow, model, f"mlflow-artifacts:/{model}")
    res = fetch(s3_server, f"models:/{model}/1", tmp_path / "cache", mlflow.url)
    assert res.code == 2, res.stderr
    assert "artifact root" in res.stderr and "Traceback" not in res.stderr


def test_a_runs_source_resolves_to_the_runs_artifacts_in_the_bucket(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    versioned: str,
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    model = name()
    artifacts = run_version(mlflow, model, f"s3://{versioned}/{model}-runs")
    publish(s3_server, models[1], f"{artifacts}/model/", mlflow.url)
    res = fetch(s3_server, f"models:/{model}/1", tmp_path / "cache", mlflow.url)
    assert res.code == 0, res.stderr
    assert tree(tmp_path / "cache") == tree(models[1])


def test_a_deleted_version_is_refused(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    models: tuple[Path, Path],
    versioned: str,
    tmp_path: Path,
) -> None:
    model = name()
    publish(s3_server, models[0], f"s3://{versioned}/{model}/1/", mlflow.url, "--register", model)
    mlflow.api("DELETE", "model-versions/delete", {"name": model, "version": "1"})
    res = fetch(s3_server, f"models:/{model}/1", tmp_path / "cache", mlflow.url)
    assert res.code == 3, res.stderr
    assert "no version 1" in res.stderr
    assert not tree(tmp_path / "cache")


def scrape(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_value(port: int, name: str, want: float, **labels: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if scrape(port, name, **labels) == want:
                return
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} never became {want}")


def test_sidecar_watch_reports_an_alias_moved_and_leaves_the_files_alone(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    registered: tuple[str, str],
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    model, _ = registered
    mlflow.api(
        "POST", "registered-models/alias", {"name": model, "alias": "canary", "version": "2"}
    )
    dest, port = tmp_path / "cache", free_port()
    env = base_env(s3_server, dest, mlflow.url) | {
        "FETCH_WATCH_INTERVAL": "0.5s", "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1",
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
    }  # fmt: skip
    uri = f"models:/{model}@canary"
    with open(tmp_path / "sidecar.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetcher", "sidecar", uri, str(dest)], env=env, stderr=err
        )
    try:
        wait_for_value(port, "model_fetcher_up", 1)
        wait_for_value(port, "model_fetcher_source_drift", 0, reason="alias_moved")
        assert scrape(port, "model_fetcher_model_info", source=uri, version="2") == 1
        set_alias(mlflow, model, "canary", "1")
        wait_for_value(port, "model_fetcher_source_drift", 1, reason="alias_moved")
        assert tree(dest) == tree(models[1]), "files under a running server must not change"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    moved = Result(proc.returncode, "", (tmp_path / "sidecar.log").read_text()).events(
        "alias_moved"
    )
    assert len(moved) == 1 and moved[0]["current"] == "1", "logged once per move"


# --- S3 object versions ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"], ids=["in-process", "worker-processes"])
def test_an_object_overwritten_after_publish_is_still_served_as_published(
    s3_server: SeaweedServer,
    s3: Any,
    versioned: str,
    models: tuple[Path, Path],
    tmp_path: Path,
    workers: str,
) -> None:
    prefix = f"{name()}/v1/"
    local = tmp_path / "model"
    shutil.copytree(models[0], local)
    publish(s3_server, local, f"s3://{versioned}/{prefix}", "http://127.0.0.1:1")
    manifest = json.loads(
        s3.get_object(Bucket=versioned, Key=prefix + MANIFEST_NAME)["Body"].read()
    )
    assert manifest["version"] == 2 and all(f["version_id"] for f in manifest["files"])
    shards = sorted(p.name for p in local.glob("*.safetensors"))
    # One shard replaced by other bytes of the same size, the other by a shorter file.
    same = bytearray((local / shards[0]).read_bytes())
    same[-1] ^= 0xFF
    s3.put_object(Bucket=versioned, Key=prefix + shards[0], Body=bytes(same))
    s3.put_object(Bucket=versioned, Key=prefix + shards[1], Body=b"overwritten")
    dest = tmp_path / "cache"
    env = base_env(s3_server, dest, "http://127.0.0.1:1") | {"FETCH_WORKERS": workers}
    res = run_fetcher([f"s3://{versioned}/{prefix}", str(dest)], env)
    assert res.code == 0, res.stderr
    assert tree(dest) == tree(models[0])


def test_a_manifest_that_is_not_the_one_registered_is_an_integrity_error(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    models: tuple[Path, Path],
    versioned: str,
    tmp_path: Path,
) -> None:
    """The registry's manifest_sha256 tag is the pin: a manifest rewritten under the same
    prefix (a re-publish of other bytes) is refused before a model byte is fetched."""
    model = name()
    uri = f"s3://{versioned}/{model}/1/"
    publish(s3_server, models[0], uri, mlflow.url)
    mlflow.api("POST", "registered-models/create", {"name": model})
    tags = [{"key": "manifest_sha256", "value": "0" * 64}]
    mlflow.api("POST", "model-versions/create", {"name": model, "source": uri, "tags": tags})
    res = fetch(s3_server, f"models:/{model}/1", tmp_path / "cache", mlflow.url)
    assert res.code == 4, res.stderr
    assert "0" * 64 in res.stderr
    assert not tree(tmp_path / "cache")


def test_fetch_manifest_version_reads_the_manifest_published_then(
    s3_server: SeaweedServer,
    s3: Any,
    versioned: str,
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Another model published over the same prefix later: the first manifest's VersionId
    still serves the first model, file by file, by object version."""
    uri = f"s3://{versioned}/{name()}/v1/"
    prefix = uri.split("/", 3)[3]
    publish(s3_server, models[0], uri, "http://127.0.0.1:1")
    first = s3.head_object(Bucket=versioned, Key=prefix + MANIFEST_NAME)["VersionId"]
    publish(s3_server, models[1], uri, "http://127.0.0.1:1")
    dest = tmp_path / "cache"
    env = base_env(s3_server, dest, "http://127.0.0.1:1")
    latest = run_fetcher([uri, str(dest)], env)
    assert latest.code == 0 and tree(dest) == tree(models[1]), latest.stderr
    pinned = run_fetcher([uri, str(dest)], {**env, "FETCH_MANIFEST_VERSION": first})
    assert pinned.code == 0, pinned.stderr
    assert tree(dest) == tree(models[0])


def test_a_signed_publish_registers_its_root_digest_and_fetch_pins_it(
    s3_server: SeaweedServer,
    mlflow: mlflowserver.MlflowServer,
    versioned: str,
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The registry's root_digest tag is a pin, as FETCH_MODEL_DIGEST is: the version serves
    only with a signature of exactly that digest (fail closed), with no key configured."""
    private, _ = make_key(tmp_path)
    model = name()
    uri = f"s3://{versioned}/{model}/1/"
    res = publish(
        s3_server, models[0], uri, mlflow.url, "--sign-key", str(private), "--register", model
    )
    pin = res.events("registered")[0]["root_digest"]
    assert pin and pin.startswith("sha256:")
    mv = mlflow.api("GET", f"model-versions/get?name={model}&version=1")["model_version"]
    assert {t["key"]: t["value"] for t in mv["tags"]}["root_digest"] == pin
    dest = tmp_path / "ok"
    ok = fetch(s3_server, f"models:/{model}/1", dest, mlflow.url)
    assert ok.code == 0, ok.stderr
    assert tree(dest) == {**tree(models[0]), "model.sig": tree(dest)["model.sig"]}
    # A registry that says another digest: nothing is served.
    wrong = "sha256:" + "0" * 64
    mlflow.api(
        "POST",
        "model-versions/set-tag",
        {"name": model, "version": "1", "key": "root_digest", "value": wrong},
    )
    bad_dest = tmp_path / "bad"
    bad = fetch(s3_server, f"models:/{model}/1", bad_dest, mlflow.url)
    assert bad.code == 4, bad.stderr
    assert tree(bad_dest) == {} if bad_dest.exists() else True
    pinned = fetch(
        s3_server, f"models:/{model}/1", tmp_path / "c", mlflow.url, FETCH_MODEL_DIGEST=pin
    )
    assert pinned.code == 4 and "FETCH_MODEL_DIGEST" in pinned.stderr
