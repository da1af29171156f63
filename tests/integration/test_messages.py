"""Messages that name what to change (issue 13, item 15), against the real SeaweedFS:
wrong keys name the variables they came from (never their values), an untrusted certificate
names the CA variable the user set, configuration errors follow LOG_FORMAT, and anonymous
access with keys also set says that the keys are ignored."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from devtools.seaweed import SeaweedServer
from tests.helpers import BUCKET, TLS_PREFIX, make_certs, pod_env, run_fetcher, tree

WRONG_SECRET = "definitely-not-the-secret-0123456789"


def test_wrong_keys_name_the_variables_they_came_from(
    put: Callable[[str, bytes], None], s3_server: SeaweedServer, prefix: str, dest: Path
) -> None:
    put("config.json", b"{}")
    env = {**pod_env(s3_server, prefix, dest), "MINIO_SECRET_KEY": WRONG_SECRET}
    res = run_fetcher([], env)
    assert res.code == 3, res.stderr
    assert "keys from MINIO_ACCESS_KEY / MINIO_SECRET_KEY" in res.stderr
    assert WRONG_SECRET not in res.stderr
    aws = {k: v for k, v in env.items() if not k.startswith("MINIO_") or k == "MINIO_ENDPOINT"}
    aws |= {
        "MINIO_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": WRONG_SECRET,
    }
    res = run_fetcher([], aws)
    assert res.code == 3, res.stderr
    assert "keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in res.stderr
    assert WRONG_SECRET not in res.stderr
    assert tree(dest) == {}


def test_untrusted_certificate_names_the_ca_variable_that_was_set(
    tls_seaweed: tuple[SeaweedServer, Path], tmp_path: Path
) -> None:
    server, _ = tls_seaweed
    other_ca, _, _ = make_certs(tmp_path)  # a CA that did not sign the server's certificate
    dest = tmp_path / "cache"
    env = {
        **pod_env(server, TLS_PREFIX, dest, server.https_endpoint),
        "AWS_CA_BUNDLE": str(other_ca),
    }
    res = run_fetcher([], env)
    assert res.code == 3, res.stderr
    assert f"the CA bundle {other_ca} (AWS_CA_BUNDLE) does not sign it" in res.stderr
    assert not dest.exists() or tree(dest) == {}


def test_configuration_errors_follow_log_format(tmp_path: Path) -> None:
    env = {"FETCH_CONCURRENCY": "lots", "FETCH_TERMINATION_LOG": str(tmp_path / "t")}
    res = run_fetcher([], {**env, "LOG_FORMAT": "json"})
    assert res.code == 2
    (line,) = res.stderr.splitlines()
    doc = json.loads(line)
    assert doc["event"] == "error" and doc["exit_code"] == 2
    assert any(p.startswith("FETCH_CONCURRENCY:") for p in doc["problems"])
    assert (tmp_path / "t").read_text().startswith("configuration error: ")
    text = run_fetcher([], {**env, "LOG_FORMAT": "text"})
    assert text.code == 2 and text.stderr.startswith("model-fetcher: configuration error: ")


def test_anonymous_access_with_keys_warns_that_the_keys_are_ignored(
    put: Callable[[str, bytes], None], s3_server: SeaweedServer, prefix: str, dest: Path
) -> None:
    put("config.json", b"{}")
    env = {**pod_env(s3_server, prefix, dest), "awsAnonymousCredential": "true"}
    res = run_fetcher([], env)
    ignored = res.events("setting_ignored")
    assert ignored and "the access keys set are ignored" in ignored[0]["msg"]
    # SeaweedFS refuses unsigned requests here: the refusal does not blame the keys.
    assert res.code == 3 and "keys from" not in res.stderr
