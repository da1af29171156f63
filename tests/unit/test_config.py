"""fetcher.config: env + argv -> Config, with every problem reported at once and no secret shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.config import load
from fetcher.errors import EXIT_CONFIG, ConfigError
from fetcher.units import MiB, parse_duration, parse_size
from fetcher.values import normalise_prefix, parse_s3_uri
from tests.helpers import make_certs

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzEXAMPLEKEY"

POD_ENV = {
    "MINIO_ENDPOINT": "https://model-storage-hl.model-storage.svc.cluster.local:9000",
    "MINIO_BUCKET": "llm-models",
    "MODEL_PREFIX": "mistral-24b-full/fp16-2501",
    "MODEL_CACHE_DIR": "/model-cache",
    "MINIO_ACCESS_KEY": "fetcher",
    "MINIO_SECRET_KEY": SECRET,
    "POD_NAME": "vllm-mistral-0",
}


def problems_of(argv: list[str], env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(argv, env)
    assert caught.value.exit_code == EXIT_CONFIG
    return caught.value.problems


def test_pod_environment() -> None:
    cfg = load([], POD_ENV)
    assert cfg.command == "fetch"
    assert cfg.endpoint == "https://model-storage-hl.model-storage.svc.cluster.local:9000"
    assert (cfg.bucket, cfg.prefix) == ("llm-models", "mistral-24b-full/fp16-2501/")
    assert cfg.dest == Path("/model-cache")
    assert (cfg.access_key, cfg.secret_key, cfg.session_token) == ("fetcher", SECRET, None)
    assert cfg.identity == "vllm-mistral-0"
    assert (cfg.region, cfg.tls_verify, cfg.ca_bundle, cfg.anonymous) == (
        "us-east-1",
        True,
        None,
        False,
    )
    assert (cfg.concurrency, cfg.part_size, cfg.retries, cfg.workers) == (16, 32 * MiB, 8, 1)
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.deadline) == (10.0, 60.0, None)
    assert (cfg.log_format, cfg.log_level, cfg.progress) == ("json", "info", False)
    assert cfg.termination_log == Path("/dev/termination-log")
    assert cfg.serve_cmd == () and cfg.include == () and cfg.exclude == ()


def test_kserve_storage_initializer_form() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://minio-service.kubeflow:9000/",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "S3_USE_HTTPS": "0",
        "S3_VERIFY_SSL": "0",
        "AWS_CA_BUNDLE": "/no/such/ca.pem",  # ignored: the endpoint is http
        "awsAnonymousCredential": "false",
        "HOSTNAME": "isvc-predictor-abc",
    }
    cfg = load(["s3://llm-models/mistral-24b-full/fp16-2501/", "/mnt/models"], env)
    assert cfg.command == "fetch"
    assert cfg.endpoint == "http://minio-service.kubeflow:9000"
    assert (cfg.bucket, cfg.prefix, cfg.dest) == (
        "llm-models",
        "mistral-24b-full/fp16-2501/",
        Path("/mnt/models"),
    )
    assert (cfg.access_key, cfg.secret_key) == ("AKIAEXAMPLE", SECRET)
    assert cfg.tls_verify is False and cfg.ca_bundle is None
    assert cfg.identity == "isvc-predictor-abc"


@pytest.mark.parametrize(
    ("use_https", "expected"),
    [
        ("0", "http://minio.kubeflow:9000"),
        ("false", "http://minio.kubeflow:9000"),
        ("1", "https://minio.kubeflow:9000"),
        (None, "https://minio.kubeflow:9000"),  # KServe's default
    ],
)
def test_endpoint_without_scheme(use_https: str | None, expected: str) -> None:
    env = {"S3_ENDPOINT": "minio.kubeflow:9000", "MINIO_BUCKET": "b1b", "MODEL_PREFIX": "m/"}
    env["MODEL_CACHE_DIR"] = "/c"
    if use_https is not None:
        env["S3_USE_HTTPS"] = use_https
    assert load([], env).endpoint == expected


def test_endpoint_priority() -> None:
    env = {
        "MODEL_CACHE_DIR": "/c",
        "MINIO_BUCKET": "models",
        "MODEL_PREFIX": "m/",
        "MINIO_ENDPOINT": "http://minio:9000",
        "AWS_ENDPOINT_URL": "http://aws:9000",
        "S3_ENDPOINT": "s3:9000",
    }
    assert load([], env).endpoint == "http://minio:9000"
    assert load(["--endpoint", "https://flag:9443/"], env).endpoint == "https://flag:9443"
    del env["MINIO_ENDPOINT"]
    assert load([], env).endpoint == "http://aws:9000"
    del env["AWS_ENDPOINT_URL"]
    assert load([], env).endpoint == "https://s3:9000"
    del env["S3_ENDPOINT"]
    assert load([], env).endpoint is None  # AWS itself


@pytest.mark.parametrize(
    ("endpoint", "phrase"),
    [
        ("ftp://minio:21", "expected an http:// or https:// URL"),
        ("https://", "expected a URL with a host"),
        ("http://minio:99999", "expected a port 1..65535"),
        ("http://minio:9000/?x=1", "without query or fragment"),
    ],
)
def test_bad_endpoint(endpoint: str, phrase: str) -> None:
    [problem] = problems_of([], {**POD_ENV, "MINIO_ENDPOINT": endpoint})
    assert problem.startswith("MINIO_ENDPOINT: ") and phrase in problem


@pytest.mark.parametrize(
    ("text", "prefix"),
    [("v1", "v1/"), ("v1/", "v1/"), ("/v1", "v1/"), ("a/b", "a/b/"), ("", ""), ("/", "")],
)
def test_normalise_prefix(text: str, prefix: str) -> None:
    assert normalise_prefix(text) == prefix


@pytest.mark.parametrize("text", ["a//b", "v1//", "./v1", "a/../b", "a/."])
def test_normalise_prefix_rejects_empty_and_dot_components(text: str) -> None:
    with pytest.raises(ValueError):
        normalise_prefix(text)


def test_prefix_is_a_directory() -> None:
    a = load([], {**POD_ENV, "MODEL_PREFIX": "m/v1"}).prefix
    b = load([], {**POD_ENV, "MODEL_PREFIX": "m/v1/"}).prefix
    assert a == b == "m/v1/"
    assert not "m/v10/model.safetensors".startswith(a)


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("s3://llm-models/mistral/fp16/", ("llm-models", "mistral/fp16/")),
        ("s3://llm-models/mistral/fp16", ("llm-models", "mistral/fp16/")),
        ("minio://llm-models", ("llm-models", "")),
        ("S3://my.bucket-1/", ("my.bucket-1", "")),
    ],
)
def test_parse_s3_uri(uri: str, parsed: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == parsed


@pytest.mark.parametrize(
    "uri",
    [
        "gs://bucket/x/",
        "/bucket/x",
        "s3://Bucket/x",
        "s3://ab/x",
        "s3://" + "a" * 64 + "/x",
        "s3://a..b/x",
        "s3://-ab/x",
        "s3://10.0.0.1/x",
        "s3://bucket/a//b",
    ],
)
def test_parse_s3_uri_rejects(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 2**20),
        ("32MiB", 32 * 2**20),
        ("32Mi", 32 * 2**20),
        ("8M", 8 * 10**6),
        ("8MB", 8 * 10**6),
        ("64KiB", 64 * 1024),
        ("64k", 64_000),
        ("1G", 10**9),
        ("1GiB", 2**30),
        ("1.5GiB", 3 * 2**29),
        ("100B", 100),
        (" 16 MiB ", 16 * 2**20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1", "12X", "1.5", "8iB", "1e6", "32 MiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10.0),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "10x", "1d", "ten", "inf", "nan", "1 h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_flags_override_environment() -> None:
    env = {
        **POD_ENV,
        "FETCH_CONCURRENCY": "8",
        "FETCH_PART_SIZE": "8MiB",
        "FETCH_INCLUDE": "*.json",
        "LOG_FORMAT": "json",
        "FETCH_VERIFY": "fast",
    }
    argv = [
        "--concurrency=4",
        "--part-size",
        "64KiB",
        "--include",
        "*.safetensors, config.json",
        "--include",
        "tokenizer*",
        "--log-format",
        "TEXT",
        "--verify",
        "full",
        "--bucket",
        "other-bucket",
        "--prefix",
        "m/v2",
        "--dest",
        "/elsewhere",
    ]
    cfg = load(argv, env)
    assert (cfg.concurrency, cfg.part_size) == (4, 64 * 1024)
    assert cfg.include == ("*.safetensors", "config.json", "tokenizer*")
    assert (cfg.log_format, cfg.verify_mode) == ("text", "full")
    assert (cfg.bucket, cfg.prefix, cfg.dest) == ("other-bucket", "m/v2/", Path("/elsewhere"))


def test_positionals_override_flags_and_environment() -> None:
    argv = ["s3://from-uri/p/", "/from-arg", "--bucket", "from-flag", "--dest", "/from-flag"]
    cfg = load(argv, POD_ENV)
    assert (cfg.bucket, cfg.prefix, cfg.dest) == ("from-uri", "p/", Path("/from-arg"))


def test_flags_and_positionals_may_be_interleaved() -> None:
    cfg = load(["s3://b-1/p/", "--concurrency", "2", "/d"], {})
    assert (cfg.bucket, cfg.dest, cfg.concurrency) == ("b-1", Path("/d"), 2)


def test_environment_globs_merge_kserve_patterns() -> None:
    env = {
        **POD_ENV,
        "FETCH_INCLUDE": "*.safetensors,*.json,",
        "STORAGE_ALLOW_PATTERNS": "*.json, tokenizer.model",
        "STORAGE_IGNORE_PATTERNS": " *.bin ,, original/* ",
    }
    cfg = load([], env)
    assert cfg.include == ("*.safetensors", "*.json", "tokenizer.model")
    assert cfg.exclude == ("*.bin", "original/*")


def test_blank_variables_count_as_unset() -> None:
    env = {
        **POD_ENV,
        "FETCH_CONCURRENCY": "",
        "MINIO_ENDPOINT": " ",
        "AWS_ENDPOINT_URL": "http://a",
    }
    cfg = load([], env)
    assert (cfg.concurrency, cfg.endpoint) == (16, "http://a")


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "FETCH_CONCURRENCY": "abc",
        "FETCH_PART_SIZE": "12X",
        "FETCH_RETRIES": "0",
        "FETCH_READ_TIMEOUT": "0s",
        "FETCH_DEADLINE": "soon",
        "METRICS_PORT": "70000",
        "MINIO_TLS_VERIFY": "maybe",
        "LOG_FORMAT": "xml",
        "LOG_LEVEL": "loud",
        "PUSHGATEWAY_URL": "pushgateway:9091",
        "MODEL_PREFIX": "a//b",
        "FETCH_DIRECT_IO": "sometimes",
    }
    problems = problems_of(["--workers", "65"], env)
    assert "FETCH_CONCURRENCY: expected an integer 1..1024, got 'abc'" in problems
    named = [p.split(":")[0] for p in problems]
    assert sorted(named) == sorted(
        [
            "FETCH_CONCURRENCY",
            "FETCH_PART_SIZE",
            "FETCH_RETRIES",
            "FETCH_READ_TIMEOUT",
            "FETCH_DEADLINE",
            "METRICS_PORT",
            "MINIO_TLS_VERIFY",
            "LOG_FORMAT",
            "LOG_LEVEL",
            "PUSHGATEWAY_URL",
            "MODEL_PREFIX",
            "FETCH_DIRECT_IO",
            "--workers",
            "bucket",
            "DEST",
        ]
    )


def test_part_size_bounds() -> None:
    assert load(["--part-size", "64KiB"], POD_ENV).part_size == 65536
    [problem] = problems_of(["--part-size", "1KiB"], POD_ENV)
    assert problem == "--part-size: expected a size from 64KiB to 5GiB, got '1KiB'"
    assert problems_of(["--part-size", "6GiB"], POD_ENV)


def test_secrets_never_shown() -> None:
    cfg = load([], {**POD_ENV, "AWS_SESSION_TOKEN": SECRET + "-token"})
    assert cfg.secret_key == SECRET
    for text in (repr(cfg), str(cfg)):
        assert SECRET not in text and "fetcher'" not in text

    env = {**POD_ENV, "MINIO_ENDPOINT": f"https://admin:{SECRET}@minio:9000"}
    problems = problems_of(["--endpoint", f"http://admin:{SECRET}@x"], env)
    problems += problems_of([], env)
    problems += problems_of([], {**POD_ENV, "MINIO_ENDPOINT": f"admin:{SECRET}@minio:9000"})
    problems += problems_of([], {**POD_ENV, "PUSHGATEWAY_URL": f"http://u:{SECRET}@pg"})
    assert len(problems) == 4
    assert all("credentials in the URL" in p for p in problems)
    assert not any(SECRET in p for p in problems)


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
        ("MINIO_SECRET_KEY", "MINIO_ACCESS_KEY"),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
    ],
)
def test_half_a_key_pair_is_an_error(present: str, missing: str) -> None:
    env = {k: v for k, v in POD_ENV.items() if not k.startswith("MINIO_") or k == "MINIO_BUCKET"}
    [problem] = problems_of([], {**env, present: SECRET})
    assert problem.startswith(f"{present}: ") and missing in problem
    assert SECRET not in problem


def test_credential_priority_and_absence() -> None:
    aws = {"AWS_ACCESS_KEY_ID": "aws-key", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
    assert load([], {**POD_ENV, **aws}).access_key == "fetcher"
    without = {
        k: v for k, v in POD_ENV.items() if k not in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
    }
    cfg = load([], {**without, **aws, "AWS_SESSION_TOKEN": "tok"})
    assert (cfg.access_key, cfg.secret_key, cfg.session_token) == ("aws-key", "aws-secret", "tok")
    cfg = load([], {**without, "awsAnonymousCredential": "True"})
    assert (cfg.access_key, cfg.secret_key, cfg.anonymous) == (None, None, True)
    [problem] = problems_of([], {**without, "AWS_SESSION_TOKEN": SECRET})
    assert problem.startswith("AWS_SESSION_TOKEN: ") and SECRET not in problem


def test_tls_settings(tmp_path: Path) -> None:
    ca, _, _ = make_certs(tmp_path)
    assert load([], {**POD_ENV, "MINIO_CA_BUNDLE": str(ca)}).ca_bundle == str(ca)
    env = {**POD_ENV, "MINIO_CA_BUNDLE": str(ca), "AWS_CA_BUNDLE": "/missing"}
    assert load([], env).ca_bundle == str(ca)
    [problem] = problems_of([], {**POD_ENV, "AWS_CA_BUNDLE": str(tmp_path / "missing.pem")})
    assert problem.startswith("AWS_CA_BUNDLE: no such file")


def test_unusable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    # A ConfigMap mount directory, and a file that is not PEM: named, with the fix, exit 2.
    [problem] = problems_of([], {**POD_ENV, "MINIO_CA_BUNDLE": str(tmp_path)})
    assert problem.startswith("MINIO_CA_BUNDLE: a directory; point it at the certificate file")
    junk = tmp_path / "ca.crt"
    junk.write_text("-----BEGIN CERTIFICATE-----\n")
    [problem] = problems_of([], {**POD_ENV, "MINIO_CA_BUNDLE": str(junk)})
    assert problem.startswith("MINIO_CA_BUNDLE: not a readable PEM certificate bundle")
    assert str(junk) in problem


@pytest.mark.parametrize("name", ["MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_SESSION_TOKEN"])
@pytest.mark.parametrize("bad", ["ab\ncd", "ab\x00cd", "clé"])
def test_credentials_with_control_or_non_ascii_characters(name: str, bad: str) -> None:
    # http.client would refuse the header and quote it, signature and all, in its error.
    problems = problems_of([], {**POD_ENV, name: SECRET + bad})
    assert problems == [f"{name}: contains a control or non-ASCII character"]


def test_timeouts_beyond_a_week_are_refused() -> None:
    [problem] = problems_of([], {**POD_ENV, "FETCH_READ_TIMEOUT": "100000000000"})
    assert problem.startswith("FETCH_READ_TIMEOUT: expected a duration above zero and at most")
    assert load([], {**POD_ENV, "FETCH_DEADLINE": "168h"}).deadline == 7 * 24 * 3600
    assert load([], {**POD_ENV, "MINIO_TLS_VERIFY": "false"}).tls_verify is False
    assert load([], {**POD_ENV, "S3_VERIFY_SSL": "off"}).tls_verify is False
    assert load([], {**POD_ENV, "S3_VERIFY_SSL": "yes"}).tls_verify is True


def test_region_priority() -> None:
    assert load([], {**POD_ENV, "AWS_DEFAULT_REGION": "eu-west-1"}).region == "eu-west-1"
    env = {**POD_ENV, "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "us-west-2"}
    assert load([], env).region == "us-west-2"


def test_tty_decides_log_format_and_progress() -> None:
    cfg = load([], POD_ENV, stderr_isatty=True)
    assert (cfg.log_format, cfg.progress) == ("text", True)
    assert load(["--no-progress"], POD_ENV, stderr_isatty=True).progress is False
    assert load([], {**POD_ENV, "FETCH_PROGRESS": "0"}, stderr_isatty=True).progress is False
    assert load(["--progress"], POD_ENV).progress is True
    cfg = load([], {**POD_ENV, "LOG_FORMAT": "json", "LOG_LEVEL": "WARN"}, stderr_isatty=True)
    assert (cfg.log_format, cfg.log_level) == ("json", "warning")


def test_identity_falls_back_to_hostname() -> None:
    env = {k: v for k, v in POD_ENV.items() if k != "POD_NAME"}
    assert load([], env, hostname="node-7").identity == "node-7"
    assert load([], {**env, "HOSTNAME": "pod-x"}, hostname="node-7").identity == "pod-x"


def test_other_durations_and_paths() -> None:
    env = {
        **POD_ENV,
        "FETCH_CONNECT_TIMEOUT": "500ms",
        "FETCH_DEADLINE": "2h",
        "FETCH_PROGRESS_INTERVAL": "1",
        "FETCH_WATCH_INTERVAL": "5m",
        "FETCH_LEASE_TTL": "45s",
        "FETCH_TERMINATION_LOG": "/tmp/term.log",
        "METRICS_TEXTFILE": "/var/lib/node-exporter/fetcher.prom",
        "PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091/",
        "METRICS_PORT": "0",
        "FETCH_DIRECT_IO": "off",
    }
    assert load([], POD_ENV).direct_io is True
    cfg = load([], env)
    assert cfg.direct_io is False
    assert (cfg.connect_timeout, cfg.deadline) == (0.5, 7200.0)
    assert (cfg.progress_interval, cfg.watch_interval, cfg.lease_ttl) == (1.0, 300.0, 45.0)
    assert cfg.termination_log == Path("/tmp/term.log")
    assert cfg.metrics_textfile == Path("/var/lib/node-exporter/fetcher.prom")
    assert (cfg.pushgateway_url, cfg.metrics_port) == ("http://pushgateway.monitoring:9091", 0)


def test_serve_command_after_double_dash() -> None:
    argv = ["s3://llm-models/m/", "/mnt/models", "--", "vllm", "serve", "/mnt/models", "--tp", "2"]
    cfg = load(argv, {})
    assert cfg.serve_cmd == ("vllm", "serve", "/mnt/models", "--tp", "2")
    assert cfg.dest == Path("/mnt/models")
    assert load(["fetch", "--", "python", "-m", "server"], POD_ENV).serve_cmd[0] == "python"


def test_serve_command_problems() -> None:
    [problem] = problems_of(["sidecar", "--", "vllm"], POD_ENV)
    assert problem.startswith("--: ") and "only allowed with fetch" in problem
    [problem] = problems_of(["--"], POD_ENV)
    assert problem == "--: expected a serving command after '--'"


def test_single_positional_uri_uses_model_cache_dir() -> None:
    cfg = load(["s3://llm-models/m/v1/"], {"MODEL_CACHE_DIR": "/model-cache"})
    assert (cfg.bucket, cfg.prefix, cfg.dest) == ("llm-models", "m/v1/", Path("/model-cache"))
    cfg = load(["/elsewhere"], POD_ENV)  # a lone path is DEST
    assert (cfg.bucket, cfg.dest) == ("llm-models", Path("/elsewhere"))
    [problem] = problems_of(["/a", "/b"], {})
    assert problem.startswith("SRC_URI: expected s3://BUCKET/PREFIX/")


def test_sidecar() -> None:
    cfg = load(["sidecar", "--metrics-port", "9090"], {**POD_ENV, "FETCH_WATCH_INTERVAL": "60"})
    assert (cfg.command, cfg.metrics_port, cfg.watch_interval) == ("sidecar", 9090, 60.0)


def test_verify_and_status_forms() -> None:
    cfg = load(["verify", "/cache", "--full"], {})
    assert (cfg.command, cfg.dest, cfg.full, cfg.bucket) == ("verify", Path("/cache"), True, "")
    cfg = load(["verify"], {"MODEL_CACHE_DIR": "/model-cache", "FETCH_VERIFY": "full"})
    assert (cfg.dest, cfg.full) == (Path("/model-cache"), True)
    assert load(["verify"], {"MODEL_CACHE_DIR": "/m"}).full is False
    cfg = load(["status"], {"MODEL_CACHE_DIR": "/model-cache"})
    assert (cfg.command, cfg.dest) == ("status", Path("/model-cache"))
    assert load(["status", "rel/dir"], {}).dest == Path.cwd() / "rel/dir"
    [problem] = problems_of(["status"], {})
    assert problem.startswith("DEST: ")


def test_publish_form(tmp_path: Path) -> None:
    cfg = load(["publish", str(tmp_path), "s3://llm-models/m/v2"], {"MODEL_CACHE_DIR": "/x"})
    assert (cfg.command, cfg.local_dir, cfg.dest) == ("publish", tmp_path, tmp_path)
    assert (cfg.bucket, cfg.prefix) == ("llm-models", "m/v2/")
    problems = problems_of(["publish", str(tmp_path / "missing"), "s3://Bad_Bucket/"], {})
    assert [p.split(":")[0] for p in problems] == ["S3_URI", "LOCAL_DIR"]
    problems = problems_of(["publish"], {})
    assert [p.split(":")[0] for p in problems] == ["bucket", "LOCAL_DIR"]


def test_command_line_errors_become_config_errors() -> None:
    [problem] = problems_of(["--no-such-flag"], POD_ENV)
    assert problem.startswith("command line: ") and "--no-such-flag" in problem
    assert problems_of(["--conc", "4"], POD_ENV)  # no abbreviations
    assert problems_of(["status", "--concurrency", "4"], POD_ENV)
    assert problems_of(["s3://b-1/p/", "/d", "/extra"], {})


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["fetch", "--help"], ["publish", "-h"], ["verify", "--help"]):
        with pytest.raises(SystemExit) as caught:
            load(argv, {})
        assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "FETCH_CONCURRENCY" in out and "MINIO_ENDPOINT" in out and "publish" in out
    assert "143 SIGTERM" in out  # fetch's exit codes
    assert "  5  the cache state (DEST/.fetcher/state.json) cannot be read" in out


def test_never_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in POD_ENV.items():
        monkeypatch.setenv(name, value)
    assert [p.split(":")[0] for p in problems_of([], {})] == ["bucket", "DEST"]


def test_malformed_region_is_a_config_error() -> None:
    [problem] = problems_of([], {**POD_ENV, "AWS_REGION": "us east"})
    assert problem.startswith("AWS_REGION: expected a region name such as us-east-1")
    assert load([], {**POD_ENV, "AWS_REGION": "eu-central-1"}).region == "eu-central-1"


@pytest.mark.parametrize("prefix", [None, "", "/"])
def test_an_empty_prefix_is_refused_unless_the_whole_bucket_is_meant(prefix: str | None) -> None:
    """Issue 13, item 8: an unset prefix listed, and fetched, every model in the bucket."""
    env = {k: v for k, v in POD_ENV.items() if k != "MODEL_PREFIX"}
    if prefix is not None:
        env["MODEL_PREFIX"] = prefix
    (problem,) = problems_of([], env)
    assert problem.startswith("MODEL_PREFIX: empty, which would fetch the whole bucket")
    assert "FETCH_WHOLE_BUCKET=true" in problem
    (problem,) = problems_of(["s3://llm-models/", "/mnt/models"], {})
    assert problem.startswith("SRC_URI: empty")
    cfg = load([], {**env, "FETCH_WHOLE_BUCKET": "true"})
    assert (cfg.prefix, cfg.whole_bucket) == ("", True)
    assert load(["status"], env).prefix == ""  # only fetch and sidecar list the bucket


def test_publish_help_lists_only_what_publish_uses(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13, item 10 (and 15: no --progress where none is drawn)."""
    with pytest.raises(SystemExit):
        load(["publish", "--help"], {})
    out = capsys.readouterr().out
    for used in ("--include", "--exclude", "--part-size", "--endpoint", ".git/", "exit codes"):
        assert used in out, used
    for unused in ("--workers", "--verify", "--metrics-port", "--deadline", "--concurrency"):
        assert unused not in out, unused
    for command in ("publish", "status", "verify"):
        assert problems_of([command, "--progress"], POD_ENV), command
