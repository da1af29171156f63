"""OpenSSF Model Signing v1.0: the signature's format, read and written (issue 12).

A signature file is a Sigstore bundle (JSON) holding a DSSE envelope whose payload is an
in-toto Statement v1. Its one subject carries the *root digest*: sha256 over the raw bytes of
every resource digest, in the order the predicate lists them (sorted by path, then offsets).
Each resource is `{name, algorithm, digest}`; the serialization is `files` (name = the path,
digest = sha256 of the file) or `shards` (name = `path:start:end`, end exclusive, shards at
fixed offsets k*S, algorithm `sha256-sharded-S`).

We parse it ourselves instead of calling the reference `model_signing.verifying`: that API
verifies a finished local directory (it hashes every file again), while a fetch must know each
part's expected digest *before* the first GET, so that bad bytes never reach a final name and
100 GB are never read twice. The cryptography (DSSE PAE, ECDSA, X.509) is in `omskeys.py`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from fetcher.errors import SignatureError

SIGNATURE_NAME = "model.sig"  # the stock CLI's default name, beside the model
PARTS_SIGNATURE_NAME = ".model-parts.sig"  # shards of the manifest's part size
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# A signature lists ~100 bytes per resource: 64 MiB is far beyond any model's.
MAX_SIGNATURE = 64 << 20


@dataclass(frozen=True, slots=True)
class Resource:
    name: str  # files: the path; shards: path:start:end
    algorithm: str
    digest: str  # lowercase hex


@dataclass(frozen=True, slots=True)
class Envelope:
    """The signed bytes and what the bundle says about who signed them, not yet trusted."""

    payload: bytes
    signature: bytes
    key_hint: str | None  # sha256 of the signer's PEM public key, as model-signing writes it
    certificates: tuple[bytes, ...]  # DER, leaf first; empty for a bare key


@dataclass(frozen=True, slots=True)
class Statement:
    """A verified statement: what the signer promises about the model's bytes."""

    root_digest: str  # hex
    method: str  # files or shards
    resources: tuple[Resource, ...]
    shard_size: int | None = None
    ignore_paths: tuple[str, ...] = ()
    signer: str = ""  # filled in by the verifier: key:<hint> or the certificate identity

    @property
    def pin(self) -> str:
        return f"sha256:{self.root_digest}"

    def files(self) -> dict[str, str]:
        """files mode: path -> sha256 hex."""
        return {r.name: r.digest for r in self.resources}

    def shards(self) -> dict[str, list[tuple[int, int, str]]]:
        """shards mode: path -> [(start, end, sha256 hex)] in offset order."""
        out: dict[str, list[tuple[int, int, str]]] = {}
        for r in self.resources:
            path, start, end = split_shard(r.name)
            out.setdefault(path, []).append((start, end, r.digest))
        for shards in out.values():
            shards.sort()
        return out

    def paths(self) -> set[str]:
        return set(self.files()) if self.method == "files" else set(self.shards())


def split_shard(name: str) -> tuple[str, int, int]:
    path, sep1, rest = name.rpartition(":")
    path, sep2, start = path.rpartition(":")
    if not (sep1 and sep2 and start.isdigit() and rest.isdigit()):
        raise SignatureError(f"signature: shard name {name!r} is not path:start:end")
    return path, int(start), int(rest)


def root_digest(resources: Iterable[Resource]) -> str:
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r.digest))
    return h.hexdigest()


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature is computed over."""
    head = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} "
    return head.encode() + payload


# --- reading ---------------------------------------------------------------------------------


def read_envelope(data: bytes, name: str = SIGNATURE_NAME) -> Envelope:
    try:
        bundle = json.loads(data)
        material = bundle.get("verificationMaterial", {})
        envelope = bundle["dsseEnvelope"]
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureError(f"{name}: DSSE payload type is not {PAYLOAD_TYPE}")
        sigs = envelope["signatures"]
        certs = material.get("x509CertificateChain", {}).get("certificates", [])
        return Envelope(
            payload=base64.b64decode(envelope["payload"], validate=True),
            signature=base64.b64decode(sigs[0]["sig"], validate=True),
            key_hint=(material.get("publicKey") or {}).get("hint") or None,
            certificates=tuple(base64.b64decode(c["rawBytes"], validate=True) for c in certs),
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error):
        raise SignatureError(f"{name}: not a Sigstore bundle with a DSSE envelope") from None


def read_statement(payload: bytes, name: str = SIGNATURE_NAME) -> Statement:
    """The in-toto statement of a payload whose signature was already verified."""
    try:
        doc = json.loads(payload)
        statement = _statement(doc, name)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"{name}: not an OpenSSF Model Signing v1.0 statement") from None
    if root_digest(statement.resources) != statement.root_digest:
        raise SignatureError(f"{name}: the resources do not hash to the subject's root digest")
    return statement


def _statement(doc: Mapping[str, Any], name: str) -> Statement:
    if doc["_type"] != STATEMENT_TYPE or doc["predicateType"] != PREDICATE_TYPE:
        raise SignatureError(f"{name}: predicate type is not {PREDICATE_TYPE}")
    (subject,) = doc["subject"]
    ser = doc["predicate"]["serialization"]
    method = ser["method"]
    if method not in ("files", "shards") or ser.get("hash_type") != "sha256":
        raise SignatureError(f"{name}: serialization {method}/{ser.get('hash_type')} unsupported")
    resources = tuple(
        Resource(str(r["name"]), str(r["algorithm"]), str(r["digest"]).lower())
        for r in doc["predicate"]["resources"]
    )
    for r in resources:
        bytes.fromhex(r.digest)  # ValueError: not hex
    return Statement(
        root_digest=str(subject["digest"]["sha256"]).lower(),
        method=method,
        resources=resources,
        shard_size=_shard_size(ser, name) if method == "shards" else None,
        ignore_paths=tuple(str(p) for p in ser.get("ignore_paths", ())),
    )


def _shard_size(ser: Mapping[str, Any], name: str) -> int:
    # model-signing 1.1.1 writes its own shard size as a float (1000000000.0).
    size = ser["shard_size"]
    if isinstance(size, bool) or not isinstance(size, int | float) or size <= 0:
        raise SignatureError(f"{name}: shard_size {size!r} is not a positive size")
    if int(size) != size:
        raise SignatureError(f"{name}: shard_size {size!r} is not a whole number of bytes")
    return int(size)


# --- writing ---------------------------------------------------------------------------------


def sort_key(path: str, start: int = 0) -> tuple[tuple[str, ...], int]:
    """The reference's order: paths compared component by component, then offsets."""
    return PurePosixPath(path).parts, start


def files_resources(digests: Mapping[str, str]) -> list[Resource]:
    return [Resource(p, "sha256", digests[p]) for p in sorted(digests, key=sort_key)]


def shard_resources(
    shards: Mapping[str, list[str]], sizes: Mapping[str, int], size: int
) -> list[Resource]:
    """`shards[path]` are the sha256 of consecutive shards of `size`; empty files have none."""
    out: list[tuple[tuple[tuple[str, ...], int], Resource]] = []
    for path, digests in shards.items():
        for k, digest in enumerate(digests):
            start, end = k * size, min((k + 1) * size, sizes[path])
            algo = f"sha256-sharded-{size}"
            out.append((sort_key(path, start), Resource(f"{path}:{start}:{end}", algo, digest)))
    return [r for _, r in sorted(out, key=lambda pair: pair[0])]


@dataclass(frozen=True, slots=True)
class Serialization:
    method: str
    shard_size: int | None = None
    ignore_paths: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"method": self.method, "hash_type": "sha256"}
        if self.shard_size is not None:
            doc["shard_size"] = self.shard_size
        doc["allow_symlinks"] = False
        if self.ignore_paths:
            doc["ignore_paths"] = list(self.ignore_paths)
        return doc


def statement_payload(model_name: str, ser: Serialization, resources: list[Resource]) -> bytes:
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": ser.as_json(),
            "resources": [
                {"algorithm": r.algorithm, "digest": r.digest, "name": r.name} for r in resources
            ],
        },
    }
    return json.dumps(doc, indent=2).encode()


def bundle_json(payload: bytes, signature: bytes, material: dict[str, Any]) -> bytes:
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {**material, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(doc, indent=2).encode()
