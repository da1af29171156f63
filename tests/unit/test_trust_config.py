"""Trust policy settings (issue 12): parsed with the rest of the Config, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fetcher.config import load
from fetcher.errors import ConfigError
from fetcher.handoff import serving_env

BASE = {"MINIO_BUCKET": "llm-models", "MODEL_PREFIX": "m/v1/", "MODEL_CACHE_DIR": "/tmp/cache"}


def _public_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_no_policy_by_default() -> None:
    cfg = load([], BASE)
    assert not cfg.trust.required
    assert cfg.trust.keep_credentials is False and cfg.trust.refuse_pickle is False


def test_keys_for_rotation_and_a_pin(tmp_path: Path) -> None:
    a, b = _public_key(tmp_path / "a.pem"), _public_key(tmp_path / "b.pem")
    pin = "sha256:" + "AB" * 32
    cfg = load([], {**BASE, "FETCH_SIGNER_KEY": f"{a}, {b}", "FETCH_MODEL_DIGEST": pin})
    assert cfg.trust.keys == (a, b)
    assert cfg.trust.digest == "ab" * 32  # compared in lower case
    assert cfg.trust.required


def test_flags_override_the_environment(tmp_path: Path) -> None:
    a = _public_key(tmp_path / "a.pem")
    cfg = load(["--signer-key", str(a)], {**BASE, "FETCH_SIGNER_KEY": "/nonexistent.pem"})
    assert cfg.trust.keys == (a,)


def test_a_digest_alone_is_a_policy() -> None:
    assert load([], {**BASE, "FETCH_MODEL_DIGEST": "sha256:" + "0" * 64}).trust.required


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    a = _public_key(tmp_path / "a.pem")
    env = {
        **BASE,
        "FETCH_SIGNER_KEY": f"{a},{tmp_path / 'missing.pem'}",
        "FETCH_SIGNER_CERT": str(a),  # a key, not a certificate
        "FETCH_MODEL_DIGEST": "sha256:xyz",
        "FETCH_REFUSE_PICKLE": "maybe",
    }
    with pytest.raises(ConfigError) as err:
        load([], env)
    text = str(err.value)
    assert "FETCH_SIGNER_KEY: cannot read" in text
    assert "FETCH_SIGNER_CERT:" in text and "not usable" in text
    assert "FETCH_MODEL_DIGEST: expected sha256:<64 hex digits>" in text
    assert "FETCH_REFUSE_PICKLE: expected true or false" in text


def test_publish_chain_needs_a_key(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    with pytest.raises(ConfigError, match="set without --sign-key"):
        load(["publish", str(model), "s3://llm-models/m/", "--sign-cert-chain", str(model)], {})


def test_serving_env_drops_only_the_credentials() -> None:
    env = {"MINIO_SECRET_KEY": "s", "AWS_SESSION_TOKEN": "t", "HF_HOME": "/h", "PATH": "/bin"}
    assert serving_env(env, keep_credentials=False) == {"HF_HOME": "/h", "PATH": "/bin"}
    assert serving_env(env, keep_credentials=True) == env
