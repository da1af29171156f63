"""Signed models end to end (issue 12) against a real SeaweedFS, with the reference
implementation (`model-signing`, a test dependency) signing and verifying on the other side:
a model signed by it is fetched under FETCH_SIGNER_KEY, and every refusal of the trust policy
leaves nothing under a final name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer, free_port
from tests.faults.proxy import FaultProxy, FlipByte
from tests.helpers import BUCKET, Result, make_key, metric, pod_env, run_fetcher, tree

PART = 256 * 1024


def stock_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The reference `model_signing` CLI, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *args], capture_output=True, text=True, timeout=120
    )


def reference_sign(model: Path, private: Path) -> None:
    """Sign `model` in place (model.sig inside it) with the stock CLI: files mode, EC key."""
    res = stock_cli(
        "sign", "key", str(model), "--private_key", str(private),
        "--signature", str(model / "model.sig"),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def upload(s3: Any, model: Path, prefix: str) -> None:
    for path in sorted(model.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=BUCKET, Key=prefix + path.relative_to(model).as_posix(),
                          Body=path.read_bytes())  # fmt: skip


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    where = tmp_path_factory.mktemp("keys")
    return {name: make_key(where, name) for name in ("signer", "other")}


@pytest.fixture
def signed_model(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> Path:
    """A small valid safetensors model signed by the reference implementation."""
    root = tmp_path / "model"
    write_sample_model(root, 1 << 20, shards=2, seed=5)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    reference_sign(root, keys["signer"][0])
    return root


def fetch_signed(server: SeaweedServer, prefix: str, dest: Path, **env: str) -> Result:
    return run_fetcher([], {**pod_env(server, prefix, dest), "FETCH_PART_SIZE": str(PART), **env})


def test_reference_signed_model_is_fetched_and_the_cache_verifies_with_the_stock_cli(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    assert res.code == 0, res.stderr
    assert tree(dest) == tree(signed_model)  # model.sig included, in DEST
    (verified,) = res.events("signature_verified")
    assert verified["root_digest"].startswith("sha256:")
    assert verified["serialization"] == "files"
    assert res.events("start")[0]["root_digest"] == verified["root_digest"]
    assert res.events("signature_readback")  # files mode: the log says it costs a read-back
    check = stock_cli(
        "verify", "key", str(dest), "--signature", str(dest / "model.sig"),
        "--public_key", str(keys["signer"][1]), "--ignore-paths", str(dest / ".fetcher"),
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    changed = dest.parent / "changed"
    shutil.copytree(dest, changed)
    (changed / "tokenizer" / "vocab.txt").write_text("changed\n")
    refused = stock_cli(
        "verify", "key", str(changed), "--signature", str(changed / "model.sig"),
        "--public_key", str(keys["signer"][1]), "--ignore-paths", str(changed / ".fetcher"),
    )  # fmt: skip
    assert refused.returncode != 0  # the stock check is not vacuous
    # Warm start: the signature is verified again, nothing else is fetched.
    again = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    assert again.code == 0, again.stderr
    assert again.events("signature_verified")[0]["root_digest"] == verified["root_digest"]
    assert again.events("done")[0]["files_fetched"] == 0


def _pin_of(s3_server: SeaweedServer, prefix: str, dest: Path, pub: Path) -> str:
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(pub))
    assert res.code == 0, res.stderr
    return str(res.events("signature_verified")[0]["root_digest"])


def test_a_pinned_digest_alone_is_enough_and_a_different_one_is_refused(
    s3: Any, s3_server: SeaweedServer, prefix: str, tmp_path: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    pin = _pin_of(s3_server, prefix, tmp_path / "first", keys["signer"][1])
    ok = fetch_signed(s3_server, prefix, tmp_path / "pinned", FETCH_MODEL_DIGEST=pin)
    assert ok.code == 0, ok.stderr
    assert tree(tmp_path / "pinned") == tree(signed_model)
    wrong = "sha256:" + "0" * 64
    bad = fetch_signed(s3_server, prefix, tmp_path / "bad", FETCH_MODEL_DIGEST=wrong)
    assert bad.code == 4, bad.stderr
    assert "differs from FETCH_MODEL_DIGEST" in bad.stderr
    assert tree(tmp_path / "bad") == {}


def _refused(res: Result, dest: Path, reason: str) -> None:
    assert res.code == 4, res.stderr
    assert reason in res.stderr
    assert tree(dest) == {}  # refused before any model byte: nothing under a final name
    assert "Traceback" not in res.stderr


def test_an_unsigned_model_is_refused(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    (signed_model / "model.sig").unlink()
    upload(s3, signed_model, prefix)
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    _refused(res, dest, "no model.sig under")


def test_a_signature_by_another_key_is_refused_and_a_rotation_list_accepts_it(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["other"][1]))
    _refused(res, dest, "signed by an unknown key")
    both = f"{keys['other'][1]},{keys['signer'][1]}"
    ok = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=both)
    assert ok.code == 0, ok.stderr


def test_a_forged_signature_is_refused(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    """The statement rewritten (another digest for a shard), the signature left as it was."""
    import base64
    import json

    sig = signed_model / "model.sig"
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "ab" * 32
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    upload(s3, signed_model, prefix)
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    _refused(res, dest, "bad signature")


def test_an_extra_unsigned_file_is_refused_unless_excluded(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    s3.put_object(Bucket=BUCKET, Key=prefix + "extra.py", Body=b"import os\n")
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    _refused(res, dest, "extra.py is in the bucket but not signed")
    ok = fetch_signed(
        s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]), FETCH_EXCLUDE="extra.py"
    )
    assert ok.code == 0, ok.stderr
    assert "extra.py" not in tree(dest)


def test_a_signed_file_missing_from_the_bucket_is_refused(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    s3.delete_object(Bucket=BUCKET, Key=prefix + "tokenizer/vocab.txt")
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    _refused(res, dest, "signs tokenizer/vocab.txt, which is missing from the bucket")


def test_a_tampered_object_never_gets_its_final_name(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    vocab = signed_model / "tokenizer" / "vocab.txt"
    s3.put_object(Bucket=BUCKET, Key=prefix + "tokenizer/vocab.txt", Body=b"x\ny\n")
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    assert res.code == 4, res.stderr
    assert "checksum mismatch" in res.stderr and "tokenizer/vocab.txt" in res.stderr
    assert "tokenizer/vocab.txt" not in tree(dest)
    assert vocab.exists()


def test_unreadable_or_conflicting_trust_settings_are_configuration_errors(
    s3_server: SeaweedServer, prefix: str, dest: Path, tmp_path: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    missing = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(tmp_path / "nope.pem"))
    assert missing.code == 2 and "FETCH_SIGNER_KEY: cannot read" in missing.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    bad = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(garbage))
    assert bad.code == 2 and "is not usable" in bad.stderr
    lonely = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_IDENTITY="ci@example.com")
    assert lonely.code == 2 and "set without FETCH_SIGNER_CERT" in lonely.stderr
    pin = fetch_signed(s3_server, prefix, dest, FETCH_MODEL_DIGEST="md5:abc")
    assert pin.code == 2 and "FETCH_MODEL_DIGEST" in pin.stderr
    assert not dest.exists() or tree(dest) == {}


def test_the_outage_rule_serves_only_a_cache_verified_under_a_configured_key(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    upload(s3, signed_model, prefix)
    assert fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1])).code == 0
    down = {"MINIO_ENDPOINT": f"http://127.0.0.1:{free_port()}", "FETCH_CONNECT_TIMEOUT": "1"}
    ok = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]), **down)
    assert ok.code == 0, ok.stderr
    other = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["other"][1]), **down)
    assert other.code == 3, other.stderr
    assert "not verified under the configured trust policy" in other.stderr
    assert tree(dest) == tree(signed_model)  # refusing to serve removes nothing


def test_pickle_weights_are_named_and_refused_on_request(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, tmp_path: Path,
) -> None:  # fmt: skip
    s3.put_object(Bucket=BUCKET, Key=prefix + "pytorch_model.bin", Body=b"\x80\x04pickle")
    s3.put_object(Bucket=BUCKET, Key=prefix + "config.json", Body=b"{}")
    warned = fetch_signed(s3_server, prefix, dest)
    assert warned.code == 0, warned.stderr
    (event,) = warned.events("pickle_weights")
    assert event["files"] == ["pytorch_model.bin"]
    other = tmp_path / "refusing"
    refused = fetch_signed(s3_server, prefix, other, FETCH_REFUSE_PICKLE="true")
    assert refused.code == 4 and "pickle" in refused.stderr
    assert tree(other) == {}


# --- publish --sign-key ----------------------------------------------------------------------


def publish_signed(
    server: SeaweedServer, local: Path, prefix: str, *flags: str, **env: str
) -> Result:
    base = pod_env(server, prefix, local.parent / "unused-dest")
    base.pop("MODEL_PREFIX")
    base.pop("MINIO_BUCKET")
    return run_fetcher(
        ["publish", str(local), f"s3://{BUCKET}/{prefix}", *flags],
        {**base, "FETCH_PART_SIZE": str(PART), **env},
    )


@pytest.fixture
def plain_model(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    write_sample_model(root, 1 << 20, shards=2, seed=9)
    (root / "empty.txt").write_bytes(b"")
    return root


def test_publish_signs_both_ways_and_the_stock_cli_accepts_local_dir_and_cache(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, plain_model: Path,
    keys: dict[str, tuple[Path, Path]], tmp_path: Path,
) -> None:  # fmt: skip
    private, public = keys["signer"]
    res = publish_signed(s3_server, plain_model, prefix, "--sign-key", str(private))
    assert res.code == 0, res.stderr
    pin = res.stdout.strip().splitlines()[-1]
    assert pin.startswith("sha256:") and len(pin) == 71
    sig = tmp_path / "downloaded.sig"
    sig.write_bytes(s3.get_object(Bucket=BUCKET, Key=prefix + "model.sig")["Body"].read())
    local = stock_cli("verify", "key", str(plain_model), "--signature", str(sig),
                      "--public_key", str(public))  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr
    got = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(public))
    assert got.code == 0, got.stderr
    (event,) = got.events("signature_verified")
    assert event["serialization"] == "shards" and event["root_digest"] == pin
    assert not got.events("signature_readback")  # every part checked as it arrived
    assert tree(dest) == {**tree(plain_model), "model.sig": sig.read_bytes()}
    # No --ignore-paths: publish's signature already leaves .fetcher/ and its own files out.
    cache = stock_cli("verify", "key", str(dest), "--signature", str(dest / "model.sig"),
                      "--public_key", str(public))  # fmt: skip
    assert cache.returncode == 0, cache.stdout + cache.stderr
    pinned = fetch_signed(s3_server, prefix, tmp_path / "pinned", FETCH_MODEL_DIGEST=pin)
    assert pinned.code == 0, pinned.stderr


def test_publish_refuses_names_with_a_colon_when_signing(
    s3_server: SeaweedServer, prefix: str, plain_model: Path, keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    (plain_model / "a:b.txt").write_text("x")
    res = publish_signed(s3_server, plain_model, prefix, "--sign-key", str(keys["signer"][0]))
    assert res.code == 2 and "':'" in res.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_byte_flipped_in_transit_fails_the_parts_sha256_and_is_fetched_again(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, plain_model: Path,
    keys: dict[str, tuple[Path, Path]], proxy: FaultProxy, workers: str,
) -> None:  # fmt: skip
    """In this process and in FETCH_WORKERS processes (the sha256 is asked for per part)."""
    res = publish_signed(s3_server, plain_model, prefix, "--sign-key", str(keys["signer"][0]))
    assert res.code == 0, res.stderr
    # Only the signature protects the bytes: the xxh3 manifest is gone.
    s3.delete_object(Bucket=BUCKET, Key=prefix + ".model-manifest.json")
    shard = "model-00001-of-00002.safetensors"
    proxy.add_fault(FlipByte(1000), path_contains=shard, ranged=True)
    got = run_fetcher([], {**pod_env(s3_server, prefix, dest, proxy.endpoint),
                           "FETCH_SIGNER_KEY": str(keys["signer"][1]),
                           "FETCH_WORKERS": workers})  # fmt: skip
    assert got.code == 0, got.stderr
    (warned,) = got.events("part_checksum")
    assert warned["file"] == shard
    assert tree(dest)[shard] == (plain_model / shard).read_bytes()


def test_a_replaced_shard_with_a_rewritten_manifest_is_refused_by_the_signature(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, plain_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    """Someone with write access to the bucket replaces a shard and publishes a manifest that
    matches it (publish without a key), leaving the old signatures: exit 4, no final name."""
    assert publish_signed(s3_server, plain_model, prefix, "--sign-key",
                          str(keys["signer"][0])).code == 0  # fmt: skip
    shard = plain_model / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # in the tensor data: the header still parses
    shard.write_bytes(bytes(data))
    assert publish_signed(s3_server, plain_model, prefix).code == 0
    got = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    assert got.code == 4, got.stderr
    assert "checksum mismatch" in got.stderr and shard.name in got.stderr
    assert shard.name not in tree(dest)


def test_status_verify_full_and_the_info_metric_carry_the_signature(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]], tmp_path: Path,
) -> None:  # fmt: skip
    import json
    import os

    upload(s3, signed_model, prefix)
    textfile = tmp_path / "metrics.prom"
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]),
                       METRICS_TEXTFILE=str(textfile))  # fmt: skip
    assert res.code == 0, res.stderr
    pin = res.events("signature_verified")[0]["root_digest"]
    signer = res.events("signature_verified")[0]["signer"]
    assert signer.startswith("key:")
    assert metric(textfile, "model_fetcher_model_info", digest=pin, signer=signer) == 1
    status = run_fetcher(["status", str(dest)], {})
    assert json.loads(status.stdout)["signature"] == {
        "root_digest": pin, "signer": signer, "serialization": "files",
    }  # fmt: skip
    assert run_fetcher(["verify", str(dest), "--full"], {}).code == 0
    vocab = dest / "tokenizer" / "vocab.txt"
    st = vocab.stat()
    vocab.write_bytes(b"b\na\n")  # same size, same mtime: only a rehash sees it
    os.utime(vocab, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_fetcher(["verify", str(dest)], {}).code == 0
    full = run_fetcher(["verify", str(dest), "--full"], {})
    assert full.code == 4
    assert "tokenizer/vocab.txt: sha256 differs from model.sig" in full.stdout


# --- certificates ----------------------------------------------------------------------------


def make_ca_and_leaf(where: Path, email: str) -> dict[str, Path]:
    """A CA and a code-signing leaf for `email` (SAN), as a company PKI would issue them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test model-signing CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ci signer")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    paths = {"ca": where / "ca.pem", "key": where / "leaf.key.pem", "chain": where / "chain.pem"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["chain"].write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    paths["key"].write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return paths


def test_certificate_signer_identity_is_checked_and_the_stock_cli_agrees(
    s3: Any, s3_server: SeaweedServer, prefix: str, tmp_path: Path, plain_model: Path,
) -> None:  # fmt: skip
    pki = make_ca_and_leaf(tmp_path, "ci@example.com")
    res = publish_signed(s3_server, plain_model, prefix, "--sign-key", str(pki["key"]),
                         "--sign-cert-chain", str(pki["chain"]))  # fmt: skip
    assert res.code == 0, res.stderr
    sig = tmp_path / "cert.sig"
    sig.write_bytes(s3.get_object(Bucket=BUCKET, Key=prefix + "model.sig")["Body"].read())
    stock = stock_cli("verify", "certificate", str(plain_model), "--signature", str(sig),
                      "--certificate_chain", str(pki["ca"]))  # fmt: skip
    assert stock.returncode == 0, stock.stdout + stock.stderr
    trust = {"FETCH_SIGNER_CERT": str(pki["ca"])}
    ok = fetch_signed(s3_server, prefix, tmp_path / "ok", FETCH_SIGNER_IDENTITY="ci@example.com",
                      **trust)  # fmt: skip
    assert ok.code == 0, ok.stderr
    assert ok.events("signature_verified")[0]["signer"] == "cert:ci@example.com"
    wrong = tmp_path / "wrong"
    bad = fetch_signed(s3_server, prefix, wrong, FETCH_SIGNER_IDENTITY="eve@example.com", **trust)
    _refused(bad, wrong, "not FETCH_SIGNER_IDENTITY 'eve@example.com'")
    (tmp_path / "other").mkdir()
    other = make_ca_and_leaf(tmp_path / "other", "ci@example.com")  # same name, another CA
    elsewhere = tmp_path / "elsewhere"
    untrusted = fetch_signed(s3_server, prefix, elsewhere, FETCH_SIGNER_CERT=str(other["ca"]),
                             FETCH_SIGNER_IDENTITY="ci@example.com")  # fmt: skip
    _refused(untrusted, elsewhere, "does not chain to FETCH_SIGNER_CERT")


def test_kill_9_then_resume_under_the_trust_policy(
    s3_server: SeaweedServer, prefix: str, dest: Path, tmp_path: Path, proxy: FaultProxy,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    import os
    import signal

    from tests.faults.proxy import Stall
    from tests.helpers import popen_fetcher, wait_for_parts

    local = tmp_path / "one"
    local.mkdir()
    data = os.urandom(16 * PART)
    (local / "weights.dat").write_bytes(data)
    assert publish_signed(s3_server, local, prefix, "--sign-key", str(keys["signer"][0])).code == 0
    # model.sig (one ranged GET, the smallest file first) and 6 parts pass, then all stall.
    proxy.add_fault(Stall(60, after=0), method="GET", ranged=True, times=None, skip=7)
    env = {**pod_env(s3_server, prefix, dest, proxy.endpoint), "FETCH_PART_SIZE": str(PART),
           "FETCH_CONCURRENCY": "2", "FETCH_SIGNER_KEY": str(keys["signer"][1])}  # fmt: skip
    proc = popen_fetcher(env)
    wait_for_parts(dest, 6)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -9
    proc.communicate()
    assert not (dest / "weights.dat").exists()
    proxy.reset()
    res = run_fetcher([], env)
    assert res.code == 0, res.stderr
    assert res.events("resume")[0]["parts_kept"] >= 6
    assert (dest / "weights.dat").read_bytes() == data
    assert run_fetcher(["verify", str(dest), "--full"], {}).code == 0


def test_a_model_signed_by_the_reference_in_shards_mode_is_checked_part_by_part(
    s3: Any, s3_server: SeaweedServer, prefix: str, dest: Path, signed_model: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:  # fmt: skip
    """model-signing's own shards signature (its shard_size a float, no empty files)."""
    (signed_model / "model.sig").unlink()
    (signed_model / "empty.txt").write_bytes(b"")
    script = (
        "import sys; from model_signing import hashing, signing; "
        "signing.Config().use_elliptic_key_signer(private_key=sys.argv[1])"
        f".set_hashing_config(hashing.Config().use_shard_serialization(shard_size={PART}))"
        ".sign(sys.argv[2], sys.argv[2] + '/model.sig')"
    )
    done = subprocess.run([sys.executable, "-c", script, str(keys["signer"][0]), str(signed_model)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    upload(s3, signed_model, prefix)
    res = fetch_signed(s3_server, prefix, dest, FETCH_SIGNER_KEY=str(keys["signer"][1]))
    assert res.code == 0, res.stderr
    assert res.events("signature_verified")[0]["serialization"] == "shards"
    assert not res.events("signature_readback")
    assert tree(dest) == tree(signed_model)
