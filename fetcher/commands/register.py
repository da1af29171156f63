"""`publish ... --register NAME [--alias ALIAS]`: the pipeline step that records a published
prefix as a new MLflow model version, tagged with what pins it (issue 15).

Tags: `manifest_sha256` (the sha256 of the `.model-manifest.json` bytes just written, which
`fetch` checks before trusting the manifest) and, in a versioned bucket, `manifest_version`
(its S3 VersionId, which `fetch` reads instead of the latest manifest) and, for a signed
model, `root_digest` (the signature's `sha256:<hex>`, which `fetch` then pins as if
FETCH_MODEL_DIGEST named it).
"""

from __future__ import annotations

import hashlib

from fetcher.config import Config
from fetcher.observe import log
from fetcher.source.registry import mlflow
from fetcher.tasks import in_daemon_thread


async def register_published(
    cfg: Config, manifest: bytes, manifest_version: str | None, root_digest: str | None = None
) -> str:
    assert cfg.register is not None
    name, alias = cfg.register, cfg.register_alias
    source = f"s3://{cfg.bucket}/{cfg.prefix}"
    tags = {mlflow.TAG_MANIFEST_SHA256: hashlib.sha256(manifest).hexdigest()}
    if manifest_version:
        tags[mlflow.TAG_MANIFEST_VERSION] = manifest_version
    if root_digest:
        tags[mlflow.TAG_ROOT_DIGEST] = root_digest
    version = await in_daemon_thread(lambda: mlflow.register(cfg, name, source, tags, alias))
    where = f" and moved alias {alias!r} to it" if alias else ""
    log.event(
        "registered",
        f"registered {source} as version {version} of {name!r}{where}",
        model=name,
        version=version,
        alias=alias,
        source=source,
        manifest_sha256=tags[mlflow.TAG_MANIFEST_SHA256],
        manifest_version=manifest_version,
        root_digest=root_digest,
    )
    return version
