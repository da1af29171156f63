"""What a fetch serves, recorded once (issue 15): the resolution chain in the state's
`source`, which `status` shows, the start log repeats, the info metric labels and the
termination log's success line (so `kubectl describe pod` says what each replica serves).

    models:/m@champion -> version 7 -> s3://llm-models/m/7/ -> manifest sha256:ab12...
      -> 3 object versions
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fetcher.config import Config
from fetcher.source.registry.resolve import Resolved
from fetcher.transfer.plan import Job


def source_record(
    cfg: Config, resolved: Resolved | None, manifest_sha256: str | None, jobs: list[Job]
) -> dict[str, str]:
    """The state's `source`: where the files came from and how that was decided."""
    record = {"endpoint": cfg.endpoint or "aws", "bucket": cfg.bucket, "prefix": cfg.prefix}
    steps = [resolved.chain()] if resolved else [f"s3://{cfg.bucket}/{cfg.prefix}"]
    if resolved is not None:
        record |= {"uri": resolved.uri, "registry": resolved.registry, "version": resolved.version}
    if manifest_sha256:
        record["manifest_sha256"] = manifest_sha256
        steps.append(f"manifest sha256:{manifest_sha256}")
    if resolved is not None and resolved.root_digest:
        record["root_digest"] = resolved.root_digest
        steps.append(f"signed root {resolved.root_digest}")
    versions = sum(1 for job in jobs if job.obj.version_id)
    if versions:
        record["object_versions"] = str(versions)
        steps.append(f"{versions} object versions")
    record["chain"] = " -> ".join(steps)
    return record


def metric_location(cfg: Config) -> tuple[str, str]:
    """The bucket and prefix labels of every series. A registry URI is known before it is
    resolved, and stays the same when its alias moves: it is the prefix label then."""
    if cfg.registry_ref is not None:
        return "", cfg.registry_ref.uri
    return cfg.bucket, cfg.prefix


def served_line(source: Mapping[str, str]) -> str:
    """One line for the termination log on success."""
    chain = source.get("chain") or f"s3://{source.get('bucket', '')}/{source.get('prefix', '')}"
    return f"serving {chain}"


def report_served(termination_log: Path, source: Mapping[str, str]) -> None:
    """On success too, one line in the termination log (cli.py writes the failures')."""
    try:
        with open(termination_log, "w", encoding="utf-8") as fh:
            fh.write(served_line(source)[:4000] + "\n")
    except OSError:
        pass  # not in a pod, or not writable: the `done` log line says the same


def info_labels(source: Mapping[str, str]) -> dict[str, str]:
    """model_fetcher_model_info's labels: low cardinality, "" when unknown."""
    where = source.get("uri") or f"s3://{source.get('bucket', '')}/{source.get('prefix', '')}"
    digest = source.get("root_digest") or source.get("manifest_sha256")
    return {
        "source": where,
        "version": source.get("version", ""),
        "digest": f"sha256:{digest}" if digest and ":" not in digest else (digest or ""),
        "signer": source.get("signer", ""),
    }
