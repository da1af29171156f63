"""Registry URIs and settings as config parses them (issue 15): pure, no I/O."""

from __future__ import annotations

import pytest

from fetcher.commands.served import info_labels, served_line, source_record
from fetcher.config import load
from fetcher.errors import ConfigError
from fetcher.source.base import RemoteObject
from fetcher.source.registry.resolve import Resolved, s3_location
from fetcher.source.registry.uri import RegistryRef, parse_registry_uri
from fetcher.transfer.plan import Job


@pytest.mark.parametrize(
    ("uri", "want"),
    [
        ("models:/mistral-24b@champion", ("mlflow", "mistral-24b", None, "champion", None)),
        ("models:/mistral 24b/7", ("mlflow", "mistral 24b", "7", None, None)),
        ("model-registry://llm", ("kubeflow", "llm", None, None, None)),
        ("model-registry://llm/v2", ("kubeflow", "llm", "v2", None, None)),
        (
            "model-registry://mr.kubeflow:8080/llm",
            ("kubeflow", "llm", None, None, "mr.kubeflow:8080"),
        ),
        ("model-registry://mr:8080/llm/v2", ("kubeflow", "llm", "v2", None, "mr:8080")),
    ],
)
def test_registry_uris_parse(uri: str, want: tuple[str, ...]) -> None:
    ref = parse_registry_uri(uri)
    assert (ref.kind, ref.name, ref.version, ref.alias, ref.host) == want
    assert ref.uri == uri


@pytest.mark.parametrize(
    "uri",
    ["models:/m", "models:/m/latest", "models:/@a", "models:/m@", "model-registry://",
     "model-registry://a/b/c/d", "model-registry://nohost/llm/v1"],
)  # fmt: skip
def test_malformed_registry_uris_are_one_config_problem(uri: str) -> None:
    with pytest.raises(ConfigError) as err:
        load([uri, "/tmp/cache"], {})
    assert err.value.problems[0].startswith("SRC_URI: expected"), err.value.problems


def test_a_registry_uri_needs_no_bucket_and_model_uri_is_read_from_the_environment() -> None:
    cfg = load([], {"MODEL_URI": "models:/m@champion", "MODEL_CACHE_DIR": "/tmp/cache"})
    assert cfg.registry_ref == RegistryRef("models:/m@champion", "mlflow", "m", alias="champion")
    assert (cfg.bucket, cfg.prefix) == ("", "")
    positional = load(["models:/m/3", "/tmp/cache"], {"MODEL_URI": "models:/other/1"})
    assert positional.registry_ref is not None and positional.registry_ref.name == "m"


def test_registry_secrets_stay_out_of_repr_and_problems() -> None:
    env = {
        "MLFLOW_TRACKING_URI": "https://mlflow.example:5000",
        "MLFLOW_TRACKING_TOKEN": "tok-secret-1",
        "MLFLOW_TRACKING_USERNAME": "ci",
        "MLFLOW_TRACKING_PASSWORD": "pw-secret-2",
        "MLFLOW_TRACKING_INSECURE_TLS": "true",
    }
    cfg = load(["models:/m/1", "/tmp/cache"], env)
    assert cfg.registry.mlflow_token == "tok-secret-1" and cfg.registry.mlflow_insecure_tls
    assert "secret" not in repr(cfg)
    with pytest.raises(ConfigError) as err:
        load(["models:/m/1", "/tmp/cache"], {**env, "MLFLOW_TRACKING_URI": "ftp://x"})
    assert "secret" not in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)


def test_publish_register_and_alias_flags() -> None:
    cfg = load(
        ["publish", "/tmp", "s3://llm-models/m/1/", "--register", "m", "--alias", "champion"], {}
    )
    assert (cfg.register, cfg.register_alias) == ("m", "champion")
    with pytest.raises(ConfigError, match="--alias: only with --register"):
        load(["publish", "/tmp", "s3://llm-models/m/1/", "--alias", "champion"], {})


def test_locations_the_fetcher_cannot_serve_are_config_errors_with_the_fix() -> None:
    ref = parse_registry_uri("models:/m/1")
    assert s3_location(ref, "s3://llm-models/m/1") == ("llm-models", "m/1/")
    with pytest.raises(ConfigError, match="artifact root at the bucket"):
        s3_location(ref, "mlflow-artifacts:/1/abc/artifacts/model")
    with pytest.raises(ConfigError, match="not an s3:// location"):
        s3_location(ref, "file:///mlruns/1/abc")


def test_the_recorded_chain_names_every_step() -> None:
    cfg = load(["models:/m@champion", "/tmp/cache"], {"MINIO_ENDPOINT": "http://127.0.0.1:9000"})
    resolved = Resolved("models:/m@champion", "mlflow", "7", "llm-models", "m/7/")
    jobs = [
        Job(RemoteObject("m/7/a", "a", 1, '"e"', "v-1")),
        Job(RemoteObject("m/7/b", "b", 1, "e")),
    ]
    record = source_record(resolved.apply(cfg), resolved, "ab" * 32, jobs)
    assert record["chain"] == (
        f"models:/m@champion -> version 7 -> s3://llm-models/m/7/ -> manifest sha256:{'ab' * 32}"
        " -> 1 object versions"
    )
    assert served_line(record) == f"serving {record['chain']}"
    assert info_labels(record) == {
        "source": "models:/m@champion", "version": "7", "digest": f"sha256:{'ab' * 32}",
        "signer": "",
    }  # fmt: skip
    plain = source_record(load(["s3://llm-models/x/", "/tmp/c"], {}), None, None, [])
    assert info_labels(plain) == {
        "source": "s3://llm-models/x/",
        "version": "",
        "digest": "",
        "signer": "",
    }
