"""The registry entry point: a `models:/` or `model-registry://` URI in, one location out.

The registry's answer must be an `s3://bucket/prefix/` that the configured endpoint serves;
anything else (a local path, `mlflow-artifacts:/` proxied through the tracking server) is a
configuration error with its fix, since no retry or fallback could make it work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fetcher.config import Config
from fetcher.errors import ConfigError, IntegrityError
from fetcher.source.registry import kubeflow, mlflow
from fetcher.source.registry.uri import RegistryRef
from fetcher.tasks import in_daemon_thread
from fetcher.values import parse_s3_uri


@dataclass(frozen=True, slots=True)
class Resolved:
    uri: str  # as given: models:/m@champion
    registry: str  # mlflow, kubeflow
    version: str
    bucket: str
    prefix: str
    manifest_sha256: str | None = None  # what the manifest's bytes must hash to
    manifest_version: str | None = None  # the S3 VersionId of the manifest to read
    root_digest: str | None = None

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def chain(self) -> str:
        """models:/m@champion -> version 7 -> s3://llm-models/m/7/"""
        return f"{self.uri} -> version {self.version} -> {self.location}"

    def apply(self, cfg: Config) -> Config:
        """The config at the resolved location. A root digest the registry recorded (a signed
        `publish --register`) is pinned as FETCH_MODEL_DIGEST would pin it: a valid signature
        of exactly that digest becomes mandatory, fail closed."""
        cfg = dataclasses.replace(cfg, bucket=self.bucket, prefix=self.prefix)
        if not self.root_digest:
            return cfg
        digest = self.root_digest.removeprefix("sha256:").lower()
        if cfg.trust.digest and cfg.trust.digest.lower() != digest:
            raise IntegrityError(
                f"{self.uri} version {self.version} was registered with root digest "
                f"sha256:{digest}, but FETCH_MODEL_DIGEST pins sha256:{cfg.trust.digest}"
            )
        return dataclasses.replace(cfg, trust=dataclasses.replace(cfg.trust, digest=digest))


async def resolve(cfg: Config, ref: RegistryRef) -> Resolved:
    """Ask the registry (in a thread: urllib blocks) and check the location it names."""
    ask = mlflow.resolve if ref.kind == "mlflow" else kubeflow.resolve
    answer = await in_daemon_thread(lambda: ask(cfg, ref))
    bucket, prefix = s3_location(ref, answer.location)
    return Resolved(
        ref.uri,
        ref.kind,
        answer.version,
        bucket,
        prefix,
        answer.manifest_sha256,
        cfg.manifest_version or answer.manifest_version,
        answer.root_digest,
    )


def s3_location(ref: RegistryRef, location: str) -> tuple[str, str]:
    if location.startswith("mlflow-artifacts:"):
        raise ConfigError(
            f"SRC_URI: {ref.uri} resolves to {location}, artifacts proxied through the MLflow "
            "server; point its artifact root at the bucket (mlflow server "
            "--default-artifact-root s3://BUCKET/PREFIX --no-serve-artifacts) and register "
            "the s3:// location"
        )
    try:
        return parse_s3_uri(location)
    except ValueError as exc:
        raise ConfigError(
            f"SRC_URI: {ref.uri} resolves to {location!r}, not an s3:// location ({exc})"
        ) from None
