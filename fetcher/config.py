"""Configuration: one frozen `Config`, built once from the command line and the environment.

This is the only module that reads environment variables, and even it never touches
`os.environ`: `load(argv, env)` receives the mapping, so tests pass a plain dict (the KServe
storage initializer's habit of calling `os.getenv` deep inside download code is what we avoid).

Lookup order for every setting: positional argument > flag > the environment variables in the
order named. A variable that is set but blank counts as unset (Kubernetes renders an empty
Secret key as ""). Every bad value is collected and reported together in one `ConfigError`,
each problem a phrase starting with the variable, flag or argument it is about; no problem
text ever carries a secret or the password part of a URL.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypedDict, TypeVar
from urllib.parse import urlsplit, urlunsplit

from fetcher.errors import ConfigError
from fetcher.tls import tls_context
from fetcher.units import MAX_SECONDS, GiB, KiB, MiB, parse_bool, parse_duration, parse_size

Command = Literal["fetch", "sidecar", "verify", "status", "publish"]
VerifyMode = Literal["fast", "full"]
LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]

COMMANDS: tuple[Command, ...] = ("fetch", "sidecar", "verify", "status", "publish")
VERIFY_MODES: tuple[VerifyMode, ...] = ("fast", "full")
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
_ALIASES: dict[str, LogLevel] = {"warn": "warning"}

# Ranged GETs have no minimum size; 64 KiB keeps tests fast. S3 multipart *uploads* need
# parts of at least 5 MiB (except the last), so publish must round small part sizes up.
MIN_PART_SIZE, MAX_PART_SIZE = 64 * KiB, 5 * GiB


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything model-fetcher needs, validated. Secrets are left out of repr() and str()."""

    dest: Path  # the model directory on the PVC (for publish: LOCAL_DIR)
    command: Command = "fetch"
    endpoint: str | None = None  # http(s)://host[:port][/path], no trailing slash, no userinfo
    bucket: str = ""  # "" only for verify/status
    prefix: str = ""  # "" or ends with "/": "v1" must never match "v10/"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False  # unsigned requests (KServe's awsAnonymousCredential)
    region: str = "us-east-1"
    tls_verify: bool = True
    ca_bundle: str | None = None  # only kept for https endpoints
    concurrency: int = 16  # ranged GETs in flight, whole process
    part_size: int = 32 * MiB  # MIN_PART_SIZE..MAX_PART_SIZE
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    verify_mode: VerifyMode = "fast"
    retries: int = 8  # attempts per part
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    deadline: float | None = None
    metrics_port: int | None = None  # 0 asks the OS for a free port
    metrics_host: str = "0.0.0.0"  # METRICS_HOST; pods are scraped on their IP
    pushgateway_url: str | None = None
    metrics_textfile: Path | None = None
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"
    progress: bool = False  # terminal progress bar
    progress_interval: float = 5.0  # seconds between JSON progress lines
    watch_interval: float | None = None  # sidecar re-list period; None: list once
    lease_ttl: float = 30.0
    workers: int = 1
    direct_io: bool = True  # FETCH_DIRECT_IO: bulk writes bypass the page cache (directio.py)
    identity: str = "model-fetcher"  # who holds the cache lease: POD_NAME or host name
    serve_cmd: tuple[str, ...] = ()  # argv after "--", exec'd after a successful fetch
    full: bool = False  # verify --full
    local_dir: Path | None = None  # publish's LOCAL_DIR
    termination_log: Path = Path("/dev/termination-log")

    @property
    def https(self) -> bool:
        """The one answer to "is this endpoint TLS?": no endpoint means AWS itself, which is
        https; otherwise the scheme (always explicit here: `_http_url` adds the default)."""
        return self.endpoint is None or self.endpoint.startswith("https://")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context every client uses, or None for plain HTTP (so that a global
        AWS_CA_BUNDLE is never loaded for an http endpoint)."""
        return tls_context(self.tls_verify, self.ca_bundle) if self.https else None


# ---------------------------------------------------------------------------------------------
# Value parsers: pure, raise ValueError with a phrase that follows "NAME: ".

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")

L = TypeVar("L", bound=str)
T = TypeVar("T")


def normalise_prefix(p: str) -> str:
    """A key prefix as a directory: "v1" and "/v1/" become "v1/", "" stays "".

    Empty, "." and ".." components are rejected rather than collapsed: "a//b" names a
    different set of keys than "a/b", and guessing which one was meant would fetch the
    wrong model.
    """
    path = p.lstrip("/")
    if not path:
        return ""
    parts = path.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("expected a key prefix without empty, '.' or '..' components")
    return "/".join(parts) + "/"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix/") from "s3://bucket/prefix/"; "minio://" is accepted as a synonym."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme.lower() not in ("s3", "minio"):
        raise ValueError("expected s3://BUCKET/PREFIX/")
    bucket, _, prefix = rest.partition("/")
    return _bucket_name(bucket), normalise_prefix(prefix)


def _bucket_name(name: str) -> str:
    bad_pair = any(pair in name for pair in ("..", ".-", "-."))
    if not _BUCKET.fullmatch(name) or bad_pair or _IPV4.fullmatch(name):
        raise ValueError("expected a bucket name of 3-63 lowercase letters, digits, dots, hyphens")
    return name


def _http_url(text: str, default_scheme: str | None = None) -> str:
    # Checked before parsing: a password must not reach any message, however malformed.
    if "@" in text:
        raise ValueError("credentials in the URL are not allowed (use the access key variables)")
    if "://" not in text and default_scheme:
        text = f"{default_scheme}://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("expected a URL with a host")
    try:
        parts.port  # noqa: B018 - the property validates the port
    except ValueError:
        raise ValueError("expected a port 1..65535") from None
    if parts.query or parts.fragment:
        raise ValueError("expected a URL without query or fragment")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text.strip()) or not low <= int(text) <= high:
            raise ValueError(f"expected an integer {low}..{high}")
        return int(text)

    return parse


def _choice(options: tuple[L, ...], aliases: Mapping[str, L] | None = None) -> Callable[[str], L]:
    def parse(text: str) -> L:
        word = text.strip().lower()
        for option in options:
            if word == option:
                return option
        if aliases and word in aliases:
            return aliases[word]
        raise ValueError("expected one of " + ", ".join(options))

    return parse


def _seconds(text: str) -> float:
    value = parse_duration(text)
    if not 0 < value <= MAX_SECONDS:
        raise ValueError("expected a duration above zero and at most 168h, such as 10s or 5m")
    return value


def _region(text: str) -> str:
    # Part of every signature: a malformed one only surfaces later as "check the credentials".
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", text.strip()):
        raise ValueError("expected a region name such as us-east-1")
    return text.strip()


def _part_size(text: str) -> int:
    size = parse_size(text)
    if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
        raise ValueError("expected a size from 64KiB to 5GiB")
    return size


def _absolute(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a path")
    return Path(os.path.abspath(text))


# ---------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    """Raises ConfigError instead of printing usage and exiting with status 2."""

    def __init__(self, **kwargs: Any) -> None:
        # No abbreviations: "--conc" silently meaning --concurrency hides typos.
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError([f"command line: {message}"])


# (flag, metavar, environment, help); each flag overrides its environment variables.
_Flag = tuple[str, str, str, str]
_SOURCE_FLAGS: tuple[_Flag, ...] = (
    ("--endpoint", "URL", "MINIO_ENDPOINT, AWS_ENDPOINT_URL, S3_ENDPOINT",
     "S3 endpoint; without a scheme, https unless S3_USE_HTTPS=0"),
    ("--bucket", "NAME", "MINIO_BUCKET", "bucket, when no s3:// URI is given"),
    ("--prefix", "PREFIX", "MODEL_PREFIX", "key prefix of the model, a directory: v1 means v1/"),
    ("--region", "REGION", "AWS_REGION, AWS_DEFAULT_REGION", "signing region (default us-east-1)"),
)  # fmt: skip
_TRANSFER_FLAGS: tuple[_Flag, ...] = (
    ("--concurrency", "N", "FETCH_CONCURRENCY",
     "ranged requests in flight for the whole process, 1..1024 (default 16)"),
    ("--part-size", "SIZE", "FETCH_PART_SIZE",
     "bytes per ranged request, such as 32MiB, 8M or 65536; 64KiB..5GiB (default 32MiB)"),
    ("--include", "GLOBS", "FETCH_INCLUDE + STORAGE_ALLOW_PATTERNS",
     "only keys matching these comma-separated globs; repeatable"),
    ("--exclude", "GLOBS", "FETCH_EXCLUDE + STORAGE_IGNORE_PATTERNS",
     "skip keys matching these comma-separated globs; repeatable"),
    ("--retries", "N", "FETCH_RETRIES", "attempts per part, 1..100 (default 8)"),
    ("--connect-timeout", "DURATION", "FETCH_CONNECT_TIMEOUT", "e.g. 10s, 500ms (default 10s)"),
    ("--read-timeout", "DURATION", "FETCH_READ_TIMEOUT", "per socket read (default 60s)"),
    ("--deadline", "DURATION", "FETCH_DEADLINE", "give up after this long, e.g. 2h (default none)"),
    ("--workers", "N", "FETCH_WORKERS", "workers sharing the download, 1..64 (default 1)"),
    ("--verify", "MODE", "FETCH_VERIFY", "fast, or full to rehash every file (default fast)"),
    ("--metrics-port", "PORT", "METRICS_PORT", "serve /metrics on this port; 0 picks a free one"),
)  # fmt: skip
_OUTPUT_FLAGS: tuple[_Flag, ...] = (
    ("--log-format", "FORMAT", "LOG_FORMAT", "json or text (default json unless stderr is a tty)"),
    ("--log-level", "LEVEL", "LOG_LEVEL", "debug, info, warning or error (default info)"),
)
_DEST_FLAG: _Flag = ("--dest", "DIR", "MODEL_CACHE_DIR", "model directory, when DEST is not given")

_EPILOG = """\
environment only:
  MINIO_ACCESS_KEY, MINIO_SECRET_KEY (or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY),
  AWS_SESSION_TOKEN, awsAnonymousCredential, S3_USE_HTTPS, MINIO_TLS_VERIFY, S3_VERIFY_SSL,
  MINIO_CA_BUNDLE, AWS_CA_BUNDLE, PUSHGATEWAY_URL, METRICS_TEXTFILE, FETCH_PROGRESS_INTERVAL,
  FETCH_WATCH_INTERVAL, FETCH_LEASE_TTL, FETCH_TERMINATION_LOG, FETCH_DIRECT_IO, POD_NAME
Without keys, botocore's credential chain (web identity, shared config) decides.
The command may be left out: "model-fetcher s3://bucket/prefix/ /mnt/models" fetches."""

_USAGE = {
    "fetch": "model-fetcher [fetch] [SRC_URI DEST] [flags] [-- SERVE_CMD ...]",
    "sidecar": "model-fetcher sidecar [SRC_URI DEST] [flags]",
    "verify": "model-fetcher verify [DEST] [--full] [flags]",
    "status": "model-fetcher status [DEST] [flags]",
    "publish": "model-fetcher publish LOCAL_DIR s3://BUCKET/PREFIX/ [flags]",
}
_SUMMARY = {
    "fetch": "fill DEST from S3, verify it, then exec SERVE_CMD if given",
    "sidecar": "fetch, then keep serving /metrics, /healthz and /readyz",
    "verify": "check the cache; the exit code says whether it is complete and intact",
    "status": "print the cache state as JSON",
    "publish": "upload a model directory and its .model-manifest.json",
}
_FETCH_EXITS = """exit codes: 0 ok (the serve command, if given, replaces this process); 2 usage or
configuration; 3 source (auth, no such bucket or prefix, unreachable while the cache is
incomplete); 4 integrity (checksum, safetensors, shard index); 5 local cache (space,
permissions); 143 SIGTERM, 130 SIGINT. The reason is one line on stderr and in
FETCH_TERMINATION_LOG."""
_COMMAND_EPILOG = {
    "fetch": _FETCH_EXITS,
    "verify": """exit codes:
  0  every recorded file is present and unchanged (--full: and hashes as recorded),
     and the safetensors headers and shard index check out
  4  a file missing, changed, corrupt or invalid, or the last fetch did not finish
  5  the cache state (DEST/.fetcher/state.json) cannot be read; a fetch rebuilds it
The report is JSON on stdout; each problem is also logged.""",
}


def _add_flags(
    parser: argparse.ArgumentParser, title: str, flags: Sequence[_Flag]
) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(title)
    for flag, metavar, env, text in flags:
        action = "append" if flag in ("--include", "--exclude") else "store"
        group.add_argument(flag, metavar=metavar, action=action, help=f"{text} [env {env}]")
    return group


def _add_command(sub: argparse._SubParsersAction[_Parser], name: Command) -> _Parser:
    summary = _SUMMARY[name]
    parser = sub.add_parser(
        name,
        usage=_USAGE[name],
        help=summary,
        description=summary,
        epilog=_COMMAND_EPILOG.get(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if name in ("fetch", "sidecar"):
        parser.add_argument("src", nargs="?", metavar="SRC_URI", help="s3://BUCKET/PREFIX/")
    if name == "publish":
        parser.add_argument("local_dir", nargs="?", metavar="LOCAL_DIR", help="model to upload")
        parser.add_argument("src", nargs="?", metavar="S3_URI", help="s3://BUCKET/PREFIX/")
    else:
        parser.add_argument("dest_arg", nargs="?", metavar="DEST", help="model directory")
        _add_flags(parser, "location", [_DEST_FLAG])
    if name == "verify":
        parser.add_argument("--full", action="store_true", help="rehash every file")
    if name in ("fetch", "sidecar", "publish"):
        _add_flags(parser, "source", _SOURCE_FLAGS)
        _add_flags(parser, "transfer", _TRANSFER_FLAGS)
    output = _add_flags(parser, "output", _OUTPUT_FLAGS)
    output.add_argument(
        "--progress", action=argparse.BooleanOptionalAction,
        help="terminal progress bar (default on when stderr is a tty) [env FETCH_PROGRESS]",
    )  # fmt: skip
    return parser


def build_parser() -> tuple[_Parser, dict[Command, _Parser]]:
    """The top-level parser (for --help) and one parser per command."""
    top = _Parser(
        prog="model-fetcher", epilog=_EPILOG,
        description="Fill a model cache directory from MinIO/S3, verified, then hand off.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    return top, {name: _add_command(sub, name) for name in COMMANDS}


def _parse_command_line(argv: Sequence[str]) -> tuple[Command, argparse.Namespace, list[str]]:
    """Returns the command, its namespace, and problems with the serving command after "--"."""
    args, problems = list(argv), []
    serve: list[str] | None = None
    if "--" in args:
        cut = args.index("--")
        args, serve = args[:cut], args[cut + 1 :]
    top, parsers = build_parser()
    if args and args[0] in ("-h", "--help"):
        top.print_help()
        raise SystemExit(0)
    command: Command = "fetch"  # KServe passes "SRC_URI DEST" with no command
    if args and args[0] in parsers:
        first = args.pop(0)
        command = next(name for name in COMMANDS if name == first)
    namespace = parsers[command].parse_intermixed_args(args)
    namespace.serve_cmd = tuple(serve or ())
    if serve is not None and command != "fetch":
        problems.append(f"--: a serving command is only allowed with fetch, not {command}")
    elif serve == []:
        problems.append("--: expected a serving command after '--'")
    return command, namespace, problems


# ---------------------------------------------------------------------------------------------
# Building the Config


class _Reader:
    """Finds each setting (flag first, then environment names in order) and collects problems."""

    def __init__(self, ns: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.ns, self.env = ns, env
        self.problems: list[str] = []

    def find(self, names: str | Sequence[str], flag: str | None = None) -> tuple[str, str] | None:
        """(where, text) of the given flag or the first variable that is set and not blank."""
        text = getattr(self.ns, flag[2:].replace("-", "_"), None) if flag else None
        if text is not None:
            return flag or "", str(text)
        for name in [names] if isinstance(names, str) else names:
            value = self.env.get(name, "").strip()
            if value:
                return name, value
        return None

    def get(
        self, names: str | Sequence[str], flag: str | None, parse: Callable[[str], T], default: T
    ) -> T:
        found = self.find(names, flag)
        return default if found is None else self.parse(found, parse, default)

    def parse(self, found: tuple[str, str], parse: Callable[[str], T], default: T) -> T:
        where, text = found
        try:
            return parse(text)
        except ValueError as exc:
            shown = "" if "@" in text else f", got {text!r}"  # may be user:password@host
            self.problems.append(f"{where}: {exc}{shown}")
            return default

    def globs(self, flag: str, names: Sequence[str]) -> tuple[str, ...]:
        given: list[str] | None = getattr(self.ns, flag[2:], None)
        texts = given if given is not None else [self.env.get(name, "") for name in names]
        globs = (glob.strip() for text in texts for glob in text.split(","))
        return tuple(dict.fromkeys(glob for glob in globs if glob))


def _positionals(ns: argparse.Namespace, command: Command) -> tuple[str | None, str | None]:
    src: str | None = getattr(ns, "src", None)
    dest: str | None = getattr(ns, "dest_arg", None)
    looks_like_uri = src is not None and ("://" in src or src.lower().startswith(("s3:", "minio:")))
    if command != "publish" and src is not None and dest is None and not looks_like_uri:
        return None, src  # a lone path is DEST; the source comes from flags or environment
    return src, dest


def _bucket_and_prefix(r: _Reader, command: Command, src: str | None) -> tuple[str, str]:
    if src is not None:
        where = "S3_URI" if command == "publish" else "SRC_URI"
        return r.parse((where, src), parse_s3_uri, ("", ""))
    bucket = r.get("MINIO_BUCKET", "--bucket", _bucket_name, "")
    prefix = r.get("MODEL_PREFIX", "--prefix", normalise_prefix, "")
    if command in ("fetch", "sidecar", "publish") and r.find("MINIO_BUCKET", "--bucket") is None:
        r.problems.append("bucket: not set (pass s3://BUCKET/PREFIX/, --bucket or MINIO_BUCKET)")
    return bucket, prefix


def _dest(r: _Reader, dest_arg: str | None) -> Path:
    if dest_arg is not None:
        return r.parse(("DEST", dest_arg), _absolute, Path("/"))
    if r.find("MODEL_CACHE_DIR", "--dest") is None:
        r.problems.append("DEST: not set (pass DEST, --dest or MODEL_CACHE_DIR)")
    return r.get("MODEL_CACHE_DIR", "--dest", _absolute, Path("/"))


def _local_dir(r: _Reader, text: str | None) -> Path | None:
    if text is None:
        r.problems.append(f"LOCAL_DIR: not given (usage: {_USAGE['publish']})")
        return None
    path = r.parse(("LOCAL_DIR", text), _absolute, None)
    if path is not None and not path.is_dir():
        r.problems.append(f"LOCAL_DIR: not a directory, got {text!r}")
    return path


def _endpoint(r: _Reader) -> str | None:
    scheme = "https" if r.get("S3_USE_HTTPS", None, parse_bool, True) else "http"
    names = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL", "S3_ENDPOINT")
    return r.get(names, "--endpoint", lambda text: _http_url(text, scheme), None)


_KEY_PAIRS = (
    ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
)


def _credentials(r: _Reader) -> tuple[str | None, str | None, str | None]:
    """Values are read directly, never through _Reader.parse: no message may quote them."""
    secret = {name: r.env.get(name, "").strip() or None for pair in _KEY_PAIRS for name in pair}
    token = r.env.get("AWS_SESSION_TOKEN", "").strip() or None
    unusable = [
        name
        for name, value in [*secret.items(), ("AWS_SESSION_TOKEN", token)]
        if value is not None and not (value.isascii() and value.isprintable())
    ]
    if unusable:
        # An HTTP library would quote the value back in its error (the signature with it).
        r.problems += [f"{name}: contains a control or non-ASCII character" for name in unusable]
        return None, None, None
    for key_name, secret_name in _KEY_PAIRS:
        key, value = secret[key_name], secret[secret_name]
        if key and value:
            return key, value, token
        if key or value:
            have, lack = (key_name, secret_name) if key else (secret_name, key_name)
            r.problems.append(f"{have}: set without {lack} (set both or neither)")
            return None, None, None
    if token:
        r.problems.append("AWS_SESSION_TOKEN: set without an access key pair")
    return None, None, None


def _tls(r: _Reader, endpoint: str | None) -> tuple[bool, str | None]:
    minio_verify = r.get("MINIO_TLS_VERIFY", None, parse_bool, True)
    s3_verify = r.get("S3_VERIFY_SSL", None, parse_bool, True)
    found = r.find(("MINIO_CA_BUNDLE", "AWS_CA_BUNDLE"))
    # No endpoint means AWS itself, which is https.
    if found is None or (endpoint is not None and endpoint.startswith("http://")):
        return minio_verify and s3_verify, None
    where, path = found
    if problem := _ca_bundle_problem(path):
        r.problems.append(f"{where}: {problem}, got {path!r}")
    return minio_verify and s3_verify, path


def _ca_bundle_problem(path: str) -> str | None:
    """Loaded here once, so a bad bundle is a configuration error, not a TLS failure later."""
    if os.path.isdir(path):
        return "a directory; point it at the certificate file inside it (for example ca.crt)"
    if not os.path.exists(path):
        return "no such file"
    try:  # loaded once here, and the same (cached) context is used by the clients later
        tls_context(True, path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"not a readable PEM certificate bundle ({getattr(exc, 'strerror', None) or exc})"
    return None


def _identity(r: _Reader, hostname: str | None) -> str:
    found = r.find(("POD_NAME", "HOSTNAME"))
    if found is not None:
        return found[1]
    return hostname if hostname is not None else socket.gethostname()


class _Settings(TypedDict):
    anonymous: bool
    region: str
    concurrency: int
    part_size: int
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    verify_mode: VerifyMode
    retries: int
    connect_timeout: float
    read_timeout: float
    deadline: float | None
    metrics_port: int | None
    metrics_host: str
    pushgateway_url: str | None
    metrics_textfile: Path | None
    log_format: LogFormat
    log_level: LogLevel
    progress: bool
    progress_interval: float
    watch_interval: float | None
    lease_ttl: float
    workers: int
    direct_io: bool
    full: bool
    termination_log: Path


def _settings(r: _Reader, command: Command, stderr_isatty: bool) -> _Settings:
    """The settings that are one lookup each, in the order of the Config fields."""
    verify_mode: VerifyMode = r.get("FETCH_VERIFY", "--verify", _choice(VERIFY_MODES), "fast")
    progress = r.get("FETCH_PROGRESS", None, parse_bool, stderr_isatty)
    return _Settings(
        anonymous=r.get("awsAnonymousCredential", None, parse_bool, False),
        region=r.get(("AWS_REGION", "AWS_DEFAULT_REGION"), "--region", _region, "us-east-1"),
        concurrency=r.get("FETCH_CONCURRENCY", "--concurrency", _int_in(1, 1024), 16),
        part_size=r.get("FETCH_PART_SIZE", "--part-size", _part_size, 32 * MiB),
        include=r.globs("--include", ("FETCH_INCLUDE", "STORAGE_ALLOW_PATTERNS")),
        exclude=r.globs("--exclude", ("FETCH_EXCLUDE", "STORAGE_IGNORE_PATTERNS")),
        verify_mode=verify_mode,
        retries=r.get("FETCH_RETRIES", "--retries", _int_in(1, 100), 8),
        connect_timeout=r.get("FETCH_CONNECT_TIMEOUT", "--connect-timeout", _seconds, 10.0),
        read_timeout=r.get("FETCH_READ_TIMEOUT", "--read-timeout", _seconds, 60.0),
        deadline=r.get("FETCH_DEADLINE", "--deadline", _seconds, None),
        metrics_port=r.get("METRICS_PORT", "--metrics-port", _int_in(0, 65535), None),
        metrics_host=r.get("METRICS_HOST", None, _host, "0.0.0.0"),
        pushgateway_url=r.get("PUSHGATEWAY_URL", None, _http_url, None),
        metrics_textfile=r.get("METRICS_TEXTFILE", None, _absolute, None),
        log_format=r.get("LOG_FORMAT", "--log-format", _choice(LOG_FORMATS), _tty(stderr_isatty)),
        log_level=r.get("LOG_LEVEL", "--log-level", _choice(LOG_LEVELS, _ALIASES), "info"),
        progress=progress if r.ns.progress is None else r.ns.progress,
        progress_interval=r.get("FETCH_PROGRESS_INTERVAL", None, _seconds, 5.0),
        watch_interval=r.get("FETCH_WATCH_INTERVAL", None, _seconds, None),
        lease_ttl=r.get("FETCH_LEASE_TTL", None, _seconds, 30.0),
        workers=r.get("FETCH_WORKERS", "--workers", _int_in(1, 64), 1),
        direct_io=r.get("FETCH_DIRECT_IO", None, parse_bool, True),
        full=bool(getattr(r.ns, "full", False)) or (command == "verify" and verify_mode == "full"),
        termination_log=r.get(
            "FETCH_TERMINATION_LOG", None, _absolute, Path("/dev/termination-log")
        ),
    )


def _host(text: str) -> str:
    """An address to listen on: an IPv4/IPv6 literal (pods scrape by IP, so no names)."""
    import ipaddress

    return str(ipaddress.ip_address(text.strip("[]")))


def _tty(stderr_isatty: bool) -> LogFormat:
    return "text" if stderr_isatty else "json"


def load(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stderr_isatty: bool = False,
    hostname: str | None = None,
) -> Config:
    """Build the Config from argv (without the program name) and the environment.

    Raises ConfigError listing every problem at once. `--help` prints help and raises
    SystemExit(0). `hostname` stands in for socket.gethostname() when neither POD_NAME nor
    HOSTNAME is set.
    """
    command, ns, problems = _parse_command_line(argv)
    r = _Reader(ns, env)
    r.problems.extend(problems)
    src, dest_arg = _positionals(ns, command)
    bucket, prefix = _bucket_and_prefix(r, command, src)
    if command == "publish":
        local_dir = _local_dir(r, getattr(ns, "local_dir", None))
        dest = local_dir or Path("/")
    else:
        local_dir, dest = None, _dest(r, dest_arg)
    endpoint = _endpoint(r)
    access_key, secret_key, session_token = _credentials(r)
    tls_verify, ca_bundle = _tls(r, endpoint)
    config = Config(
        command=command,
        endpoint=endpoint,
        bucket=bucket,
        prefix=prefix,
        dest=dest,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        tls_verify=tls_verify,
        ca_bundle=ca_bundle,
        local_dir=local_dir,
        identity=_identity(r, hostname),
        serve_cmd=ns.serve_cmd,
        **_settings(r, command, stderr_isatty),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config
