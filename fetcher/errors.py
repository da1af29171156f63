"""The exception tree of model-fetcher and the exit code of each branch.

    FetchError
    ├─ ConfigError                        exit 2   bad flag or environment; never retried
    ├─ SourceError                        exit 3
    │  ├─ ObjectNotFound                           no such bucket, prefix or key
    │  │  └─ RegistryNotFound                      no such registered model, version or alias
    │  ├─ AccessDenied                             bad credentials, forbidden
    │  ├─ SourceUnreachable                        connection refused, DNS, timeouts
    │  │  ├─ TLSFailure                            untrusted certificate, handshake failed
    │  │  └─ RegistryUnreachable                   the model registry cannot be reached
    │  ├─ RegistryRefused                          a version deleted, failed or archived
    │  └─ TransientSourceError                     5xx, SlowDown, reset, short body: retried
    ├─ IntegrityError                     exit 4
    │  ├─ ObjectChanged                            412 on If-Match: the object was replaced
    │  ├─ RangeMismatch                            Content-Range or length not what was asked
    │  ├─ ChecksumMismatch(key, expected, actual)
    │  ├─ InvalidModel                             bad safetensors header, index names no shard
    │  ├─ ManifestError                            a .model-manifest.json that cannot be used
    │  ├─ UnsafeKey                                a key that would escape the cache directory
    │  └─ SignatureError                           missing, bad or untrusted model signature
    ├─ CacheError                         exit 5   no space, permissions, corrupt local state
    │  └─ WorkerLost                               a FETCH_WORKERS process died (OOM-killed?)
    ├─ HandoffFailed                      exit 127 the serving command cannot be started
    ├─ Stopped                            exit 143 (SIGTERM) / 130 (SIGINT)
    └─ InternalError                      exit 1   a bug: anything outside this tree

Errors are mapped into this tree where they arise: botocore errors in `source/boto.py`, S3
error bodies in `source/s3errors.py`, urllib and socket errors in `source/sigv4.py` and
`transfer/http.py`, OS errors in `cache/` (`os_errors`). Messages are one line and never
carry a credential.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_SOURCE = 3
EXIT_INTEGRITY = 4
EXIT_CACHE = 5
EXIT_SIGTERM = 143
EXIT_SIGINT = 130
EXIT_NO_COMMAND = 127  # the shell's "command not found"
EXIT_INTERNAL = 1


class FetchError(Exception):
    """Base of every error model-fetcher reports; `exit_code` is the process exit status."""

    exit_code = 1


class ConfigError(FetchError):
    exit_code = EXIT_CONFIG

    def __init__(
        self,
        problems: list[str] | str,
        log_format: str | None = None,
        termination_log: object = None,
    ) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        # Where the settings that could be read say to report it (cli.py), else defaults.
        self.log_format, self.termination_log = log_format, termination_log
        super().__init__("; ".join(self.problems))


class SourceError(FetchError):
    exit_code = EXIT_SOURCE


class ObjectNotFound(SourceError):
    pass


class AccessDenied(SourceError):
    pass


class SourceUnreachable(SourceError):
    """The endpoint cannot be reached at all; a complete cache may still be served."""


class TLSFailure(SourceUnreachable):
    """The endpoint answered but TLS failed (untrusted certificate): retrying cannot help."""


class RegistryNotFound(ObjectNotFound):
    """The registry answered, and has no such model, version or alias."""


class RegistryUnreachable(SourceUnreachable):
    """The model registry cannot be reached (or answers 5xx): a complete cache is served."""


class RegistryRefused(SourceError):
    """The registry names a version that must not be served (deleted, failed, archived)."""


class TransientSourceError(SourceError):
    """Worth another attempt: 5xx, SlowDown, RequestTimeout, reset, short body, read timeout."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason  # low-cardinality label for model_fetcher_retries_total


class IntegrityError(FetchError):
    exit_code = EXIT_INTEGRITY


class ObjectChanged(IntegrityError):
    pass


class RangeMismatch(IntegrityError):
    pass


class ChecksumMismatch(IntegrityError):
    def __init__(self, key: str, expected: str, actual: str, what: str = "file") -> None:
        super().__init__(f"checksum mismatch for {what} {key}: expected {expected}, got {actual}")
        self.key, self.expected, self.actual, self.what = key, expected, actual, what


class InvalidModel(IntegrityError):
    pass


class ManifestError(IntegrityError):
    """The remote manifest is malformed or does not describe the listing."""


class UnsafeKey(IntegrityError):
    pass


class SignatureError(IntegrityError):
    """The trust policy refuses the model: no signature, a bad one, an untrusted signer, or
    bytes the signature does not cover (issue 12)."""


class CacheError(FetchError):
    exit_code = EXIT_CACHE


class WorkerLost(CacheError):
    """A worker process died under us: this node's doing (memory limit, a kill), not the
    source's. Its part is fetched again by a live worker; with none left, exit 5."""


class Stopped(FetchError):
    """A stop signal arrived; completed parts are kept for the next start."""

    def __init__(self, signum: int, exit_code: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.exit_code = exit_code


class HandoffFailed(FetchError):
    exit_code = EXIT_NO_COMMAND  # what a failed exec conventionally means


class InternalError(FetchError):
    """A bug: anything that is not one of our errors (exit 1)."""

    exit_code = EXIT_INTERNAL
