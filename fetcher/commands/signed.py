"""The trust policy at fetch time (issue 12): the signature is fetched and verified, and every
file's expected sha256 handed to the transfer engine, before any model byte is requested.

With a verified `.model-parts.sig` each ranged part is checked alone as it arrives (its sha256
is computed in the writer thread beside its xxh3). With only `model.sig` (a model signed by a
third party in `files` mode) the whole file's sha256 is computed by reading it back in order
before it is renamed into place; the log says so, since that costs a second read.

A pinned root digest alone (FETCH_MODEL_DIGEST without a key) proves the bytes without any key:
the resources hash to the root. It cannot authenticate `.model-parts.sig`, which then is not
used (whole-file read-back instead).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace

from fetcher.config import Config
from fetcher.errors import SignatureError
from fetcher.observe import log
from fetcher.source.base import ControlPlane, RemoteObject
from fetcher.transfer.plan import Expected, Job
from fetcher.verify.oms import (
    MAX_SIGNATURE,
    PARTS_SIGNATURE_NAME,
    SIGNATURE_NAME,
    Envelope,
    Statement,
    read_envelope,
    read_statement,
)

# Names the signature cannot cover (itself) or that are ours: never "unsigned extra files".
_OWN = frozenset({SIGNATURE_NAME, PARTS_SIGNATURE_NAME, ".model-manifest.json"})
SIGNATURE_SOURCE = "signature:"  # FileState.checksum prefix: signature:<fingerprint>


@dataclass(frozen=True, slots=True)
class Verified:
    statement: Statement  # model.sig's: the root digest a deployment pins
    parts: Statement | None  # .model-parts.sig's, when trusted
    body: bytes  # model.sig as verified, landed in DEST

    @property
    def serialization(self) -> str:
        return "shards" if self.parts is not None else "files"


def signers(cfg: Config) -> set[str]:
    """The signer names a recorded verification may carry to still count (outage rule)."""
    trust = cfg.trust
    if trust.cert is not None:
        return {f"cert:{trust.identity}"}
    if trust.keys:
        # cryptography (~60 ms, issue 14) only for a start with signer keys configured
        from fetcher.verify import omskeys

        return {f"key:{omskeys.key_hint(omskeys.load_public_key(p))}" for p in trust.keys}
    return {"digest"}


async def verify_signature(
    src: ControlPlane, listing: list[RemoteObject], cfg: Config
) -> Verified | None:
    """None without a trust policy; else the verified signatures, or SignatureError."""
    if not cfg.trust.required:
        return None
    by_rel = {o.rel: o for o in listing}
    where = f"s3://{cfg.bucket}/{cfg.prefix}"
    if SIGNATURE_NAME not in by_rel:
        raise SignatureError(f"no {SIGNATURE_NAME} under {where}: the trust policy requires one")
    body = await _get(src, by_rel[SIGNATURE_NAME])
    statement = _trusted(body, SIGNATURE_NAME, cfg)
    if cfg.trust.digest is not None and statement.root_digest != cfg.trust.digest:
        raise SignatureError(
            f"{SIGNATURE_NAME}: root digest {statement.pin} differs from "
            f"FETCH_MODEL_DIGEST sha256:{cfg.trust.digest}"
        )
    parts = None
    if statement.method == "shards":
        parts = statement  # a model signed in shards mode (model-signing's --shard option)
    elif PARTS_SIGNATURE_NAME in by_rel and (cfg.trust.keys or cfg.trust.cert):
        parts = _trusted(await _get(src, by_rel[PARTS_SIGNATURE_NAME]), PARTS_SIGNATURE_NAME, cfg)
        _check_bound(parts, statement, body)
    return Verified(statement, parts, body)


async def _get(src: ControlPlane, obj: RemoteObject) -> bytes:
    if obj.size > MAX_SIGNATURE:
        raise SignatureError(f"{obj.rel} is {obj.size} bytes: too large to be a signature")
    return await src.get_bytes(obj.key, etag=obj.etag)


def _trusted(body: bytes, name: str, cfg: Config) -> Statement:
    envelope = read_envelope(body, name)
    signer = _signer(envelope, name, cfg)
    return replace(read_statement(envelope.payload, name), signer=signer)


def _signer(envelope: Envelope, name: str, cfg: Config) -> str:
    trust = cfg.trust
    if not (trust.keys or trust.cert):
        return "digest"  # FETCH_MODEL_DIGEST alone: the pin, checked by the caller, is the proof
    # cryptography (~60 ms, issue 14) only for a start with a key or certificate configured
    from fetcher.verify import omskeys

    if trust.keys:
        keys = [omskeys.load_public_key(p) for p in trust.keys]
        return omskeys.verify_with_keys(envelope, keys, name)
    if trust.cert is not None and trust.identity is not None:
        roots = omskeys.load_certificates(trust.cert)
        return omskeys.verify_with_certificate(envelope, roots, trust.identity, name)
    return "digest"  # FETCH_MODEL_DIGEST alone: the pin, checked by the caller, is the proof


def _check_bound(parts: Statement, files: Statement, body: bytes) -> None:
    """.model-parts.sig must cover model.sig as it is, and the same files: an older parts
    signature (same key, another version) is refused instead of trusted."""
    if parts.method != "shards" or parts.shard_size is None:
        raise SignatureError(f"{PARTS_SIGNATURE_NAME}: not a shards signature")
    shards = parts.shards()
    size = parts.shard_size
    want = [hashlib.sha256(body[i : i + size]).hexdigest() for i in range(0, len(body), size)]
    if [d for _, _, d in shards.get(SIGNATURE_NAME, [])] != want:
        raise SignatureError(f"{PARTS_SIGNATURE_NAME} does not cover this {SIGNATURE_NAME}")
    empty = {p for p, d in files.files().items() if d == hashlib.sha256(b"").hexdigest()}
    if set(shards) - {SIGNATURE_NAME} != files.paths() - empty:
        raise SignatureError(f"{PARTS_SIGNATURE_NAME} and {SIGNATURE_NAME} sign different files")


def check_coverage(
    objs: list[RemoteObject], listing: list[RemoteObject], verified: Verified
) -> None:
    """Before any model byte: every selected file signed, every signed file in the bucket
    (an excluded one need not be fetched), and of the signed size where the signature says
    it (shards)."""
    statement = verified.statement
    signed = statement.paths()
    listed = {o.rel: o for o in listing}
    for obj in objs:
        if obj.rel not in signed and obj.rel not in _OWN and not _empty_shard_gap(obj, statement):
            raise SignatureError(
                f"{obj.rel} is in the bucket but not signed by {SIGNATURE_NAME} "
                "(exclude it with FETCH_EXCLUDE if it is not part of the model)"
            )
    sizes = _signed_sizes(verified.parts or statement)
    for path in sorted(signed):
        found = listed.get(path)
        if found is None:
            raise SignatureError(f"{SIGNATURE_NAME} signs {path}, which is missing from the bucket")
        obj = found
        if path in sizes and sizes[path] != obj.size:
            raise SignatureError(
                f"{path}: {obj.size} bytes in the bucket, {sizes[path]} signed by "
                f"{PARTS_SIGNATURE_NAME if verified.parts else SIGNATURE_NAME}"
            )


def _empty_shard_gap(obj: RemoteObject, statement: Statement) -> bool:
    # A shards signature (model-signing's own) has no resource for an empty file.
    return statement.method == "shards" and obj.size == 0


def _signed_sizes(statement: Statement) -> dict[str, int]:
    if statement.method != "shards":
        return {}
    return {path: shards[-1][1] for path, shards in statement.shards().items()}


def signed_jobs(jobs: list[Job], objs: list[RemoteObject], verified: Verified) -> list[Job]:
    """The jobs with each file's expectation from the signature; model.sig itself is one of
    them (the stock CLI verifies the cache with it), expected to be the bytes verified."""
    out = [j for j in jobs if j.obj.rel != SIGNATURE_NAME]
    listed = {o.rel: o for o in objs}
    if SIGNATURE_NAME in listed:
        own = hashlib.sha256(verified.body).digest()
        out.append(Job(listed[SIGNATURE_NAME], _whole(Expected(), own.hex(), "own")))
    files = verified.statement.files() if verified.statement.method == "files" else {}
    shards = verified.parts.shards() if verified.parts is not None else {}
    readback = 0
    for job in out:
        rel = job.obj.rel
        if rel in shards and verified.parts is not None and verified.parts.shard_size:
            job.expected = _by_parts(job, shards[rel], verified.parts.shard_size)
        elif rel in files:
            job.expected = _whole(job.expected, files[rel], files[rel])
            readback += 1
        elif rel != SIGNATURE_NAME and job.obj.size:
            raise SignatureError(f"{rel}: no usable digest in the signature")
    if readback > 1:  # model.sig itself is always read back: it is tiny
        log.event(
            "signature_readback",
            f"{readback} files are checked by their whole-file sha256 ({SIGNATURE_NAME} only, "
            f"no {PARTS_SIGNATURE_NAME}): each is read back from disk once before it is placed",
            files=readback,
        )
    return out


def _whole(base: Expected, sha256_hex: str, mark: str) -> Expected:
    value = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    return replace(base, source=SIGNATURE_SOURCE + mark[:32], s3_algorithm="sha256", s3_value=value)


def _by_parts(job: Job, shards: list[tuple[int, int, str]], size: int) -> Expected:
    starts = [start for start, _, _ in shards]
    if starts != list(range(0, job.obj.size, size)):
        raise SignatureError(f"{job.obj.rel}: its shards are not at multiples of {size}")
    digests = tuple(d for _, _, d in shards)
    mark = hashlib.sha256("".join(digests).encode()).hexdigest()
    keep = job.expected.part_size == size  # the manifest's xxh3 parts line up: keep them
    base = job.expected if keep else Expected()
    return replace(
        base,
        part_size=size,
        sha256_parts=digests,
        source=SIGNATURE_SOURCE + mark[:32],
        s3_algorithm=None,
        s3_value=None,
    )
