"""The downloaders under test: how to invoke each one into a destination directory.

Every tool gets the same server, keys and object prefix, its own defaults otherwise (the point
is what an operator gets out of the box), and an environment scrubbed of S3, MinIO, proxy and
fetcher settings inherited from the shell so nothing outside the harness tunes one of them.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

TOOL_NAMES = ("model-fetcher", "s5cmd", "rclone", "boto3", "kserve")
_SCRUB_PREFIXES = ("AWS_", "MINIO_", "S3_", "FETCH_", "RCLONE_", "MODEL_", "STORAGE_")
_SCRUB_NAMES = {"awsAnonymousCredential", "LOG_FORMAT", "METRICS_PORT", "PUSHGATEWAY_URL"}
_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass(frozen=True)
class Source:
    """Where the model lives; `prefix` ends with '/'."""

    endpoint: str
    bucket: str
    prefix: str
    access_key: str
    secret_key: str


Builder = Callable[["Tool", Source, Path], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Tool:
    """One row of the table: a name, how to build its command, and extra environment."""

    name: str
    build: Builder
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self, source: Source, dest: Path) -> tuple[list[str], dict[str, str]]:
        argv, env = self.build(self, source, dest)
        return argv, {**base_env(), **env, **self.extra_env}


def base_env() -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB_NAMES and k.lower() not in _PROXIES
    }
    # No shared AWS config or credentials file may add a profile, region or endpoint.
    return {**keep, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def byte_compile(*trees: Path) -> None:
    """Byte-compile model-fetcher (this checkout's, and each earlier checkout in `trees`) as
    the image does (container/Dockerfile runs compileall): a pod starts from byte code. A shell
    with PYTHONDONTWRITEBYTECODE set, as this VM's is, would otherwise time the compiler at
    every start: 0.21 s against 0.16 s for one 1 KiB file, same minute."""
    here = Path(__file__).resolve().parents[1]
    for tree in (here, *trees):
        if not compileall.compile_dir(tree / "fetcher", quiet=1):
            raise RuntimeError(f"cannot byte-compile {tree / 'fetcher'}")


def binary(name: str) -> str:
    """A tool from this virtualenv (where the bench extra installs them), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name) or str(here)


def _aws_env(source: Source) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": source.access_key,
        "AWS_SECRET_ACCESS_KEY": source.secret_key,
        "AWS_REGION": "us-east-1",
    }


def fetcher_env(source: Source) -> dict[str, str]:
    return {
        "MINIO_ENDPOINT": source.endpoint,
        "MINIO_BUCKET": source.bucket,
        "MODEL_PREFIX": source.prefix,
        "MINIO_ACCESS_KEY": source.access_key,
        "MINIO_SECRET_KEY": source.secret_key,
        "LOG_FORMAT": "json",
    }


def _fetcher(tool: Tool, source: Source, dest: Path) -> tuple[list[str], dict[str, str]]:
    return [binary("model-fetcher")], {**fetcher_env(source), "MODEL_CACHE_DIR": str(dest)}


def publish(source: Source, local: Path, sign_key: Path | None = None) -> None:
    """`model-fetcher publish`: upload `local` with its .model-manifest.json (not measured),
    signed (model.sig, .model-parts.sig) with `sign_key`."""
    url = f"s3://{source.bucket}/{source.prefix}"
    argv = [binary("model-fetcher"), "publish", str(local), url]
    argv += ["--sign-key", str(sign_key)] if sign_key else []
    env = {**base_env(), **fetcher_env(source)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
        raise RuntimeError(f"model-fetcher publish exited {done.returncode}:\n{tail}")


def _s5cmd(tool: Tool, source: Source, dest: Path) -> tuple[list[str], dict[str, str]]:
    url = f"s3://{source.bucket}/{source.prefix}*"
    argv = [binary("s5cmd"), "--endpoint-url", source.endpoint, "cp", url, f"{dest}/"]
    return argv, _aws_env(source)


def _rclone(tool: Tool, source: Source, dest: Path) -> tuple[list[str], dict[str, str]]:
    env = {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Minio",
        "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
        "RCLONE_CONFIG_BENCH_ENDPOINT": source.endpoint,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": source.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": source.secret_key,
    }
    remote = f"bench:{source.bucket}/{source.prefix}"
    return [binary("rclone"), "--config", "", "copy", remote, str(dest)], env


def _peer(tool: Tool, source: Source, dest: Path) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "bench.peers", tool.name, "--endpoint", source.endpoint]
    argv += ["--bucket", source.bucket, "--prefix", source.prefix, "--dest", str(dest)]
    return argv, _aws_env(source)


_BUILDERS: dict[str, Builder] = {
    "model-fetcher": _fetcher,
    "s5cmd": _s5cmd,
    "rclone": _rclone,
    "boto3": _peer,
    "kserve": _peer,
}


def select(names: Sequence[str], fetcher_variants: Sequence[str]) -> list[Tool]:
    """The tools to run, in order; each `K=V [K=V ...]` variant is one more fetcher row."""
    unknown = sorted(set(names) - set(TOOL_NAMES))
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; choose from {TOOL_NAMES}")
    tools = [Tool(name, _BUILDERS[name]) for name in TOOL_NAMES if name in names]
    if "model-fetcher" in names:
        tools[1:1] = [_variant(spec) for spec in fetcher_variants]
    return tools


def _variant(spec: str) -> Tool:
    pairs = shlex.split(spec)
    if not pairs or any("=" not in p or p.startswith("=") for p in pairs):
        raise ValueError(f"--fetcher-env wants K=V [K=V ...], got {spec!r}")
    env = dict(p.split("=", 1) for p in pairs)
    return Tool(f"model-fetcher[{' '.join(pairs)}]", _fetcher, env)


def signed_variant(public_key: Path) -> Tool:
    """model-fetcher under a trust policy: the signature checked, every part's sha256 too."""
    return Tool("model-fetcher[signed]", _fetcher, {"FETCH_SIGNER_KEY": str(public_key)})


def versions() -> dict[str, str]:
    """Versions of everything measured, for the record."""
    found = {name: _package_version(pkg) for name, pkg in _PACKAGES.items()}
    found["s5cmd"] = _first_line([binary("s5cmd"), "version"])
    found["rclone"] = _first_line([binary("rclone"), "--config", "", "version"])
    found["weed"] = _first_line([binary("weed"), "version"])
    found["model-fetcher git"] = _fetcher_commit()
    return found


def _fetcher_commit() -> str:
    """The commit of the `fetcher` package the benchmarked model-fetcher will import."""
    spec = importlib.util.find_spec("fetcher")
    if spec is None or spec.origin is None:
        return "fetcher not importable"
    where = str(Path(spec.origin).parent)
    commit = _git(where, "rev-parse", "--short", "HEAD") or "not a git checkout"
    dirty = _git(where, "status", "--porcelain", "--", ".")
    return f"{commit}{' + uncommitted changes' if dirty else ''} ({where})"


def _git(where: str, *args: str) -> str:
    try:
        argv = ["git", "-C", where, *args]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


_PACKAGES = {
    "model-fetcher": "model-fetcher",
    "boto3": "boto3",
    "botocore": "botocore",
    "aiobotocore": "aiobotocore",
    "uvloop": "uvloop",
    "xxhash": "xxhash",
}


def _package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else f"unknown (exit {out.returncode})"
