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
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict, TypeVar
from urllib.parse import urlsplit

from fetcher.args import USAGE, Command, parse_command_line
from fetcher.errors import ConfigError
from fetcher.source.proxy import DIRECT, ProxyRules, parse_no_proxy, parse_proxy
from fetcher.source.registry.uri import (
    RegistryRef,
    RegistrySettings,
    is_registry_uri,
    parse_registry_uri,
)
from fetcher.tls import tls_context
from fetcher.trust import Trust, read_trust
from fetcher.units import MiB, parse_bool
from fetcher.values import (
    absolute,
    bucket_name,
    choice,
    http_url,
    int_in,
    normalise_prefix,
    parse_s3_uri,
    part_size,
    region,
    seconds,
)
from fetcher.verify.formats import parse_families

VerifyMode = Literal["fast", "full"]
LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]

VERIFY_MODES: tuple[VerifyMode, ...] = ("fast", "full")
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
_ALIASES: dict[str, LogLevel] = {"warn": "warning"}

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything model-fetcher needs, validated. Secrets are left out of repr() and str()."""

    dest: Path  # the model directory on the PVC (for publish: LOCAL_DIR)
    command: Command = "fetch"
    endpoint: str | None = None  # http(s)://host[:port][/path], no trailing slash, no userinfo
    bucket: str = ""  # "" only for verify/status
    prefix: str = ""  # "" or ends with "/": "v1" must never match "v10/"
    whole_bucket: bool = False  # FETCH_WHOLE_BUCKET: an empty prefix is meant, not a slip
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False  # unsigned requests (KServe's awsAnonymousCredential)
    region: str = "us-east-1"
    tls_verify: bool = True
    ca_source: str | None = None  # the variable that named ca_bundle, for the TLS hint
    key_source: str = ""  # the variables the keys came from (names only), for wrong-key hints
    notices: tuple[str, ...] = ()  # settings accepted with a warning, logged once at start
    ca_bundle: str | None = None  # only kept for https endpoints
    concurrency: int = 16  # ranged GETs in flight, whole process
    part_size: int = 32 * MiB  # MIN_PART_SIZE..MAX_PART_SIZE
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    verify_mode: VerifyMode = "fast"
    retries: int = 8  # attempts per part
    outage_tolerance: float = 120.0  # how long the whole run waits out an unreachable source
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
    skip_format_checks: frozenset[str] = frozenset()  # FETCH_SKIP_FORMAT_CHECKS (formats.py)
    local_dir: Path | None = None  # publish's LOCAL_DIR
    termination_log: Path = Path("/dev/termination-log")
    # Issue 15: a registry URI is resolved at run time into bucket and prefix (fetch.py).
    registry_ref: RegistryRef | None = None
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    manifest_version: str | None = None  # FETCH_MANIFEST_VERSION: the manifest's VersionId
    register: str | None = None  # publish --register NAME
    register_alias: str | None = None  # publish --alias ALIAS
    trust: Trust = field(default_factory=Trust)  # signatures, credentials, pickle (issue 12)
    in_pod: bool = False  # KUBERNETES_SERVICE_HOST is set
    proxies: ProxyRules = DIRECT  # HTTP(S)_PROXY / NO_PROXY, curl's rules (source/proxy.py)

    @property
    def https(self) -> bool:
        """The one answer to "is this endpoint TLS?": no endpoint means AWS itself, which is
        https; otherwise the scheme (always explicit here: `http_url` adds the default)."""
        return self.endpoint is None or self.endpoint.startswith("https://")

    @property
    def tls_hint(self) -> str:
        """What to change when a certificate is not trusted, naming what the user set."""
        if self.ca_source and self.ca_bundle:
            return (
                f"the CA bundle {self.ca_bundle} ({self.ca_source}) does not sign it: point "
                f"{self.ca_source} at the CA that does, or set MINIO_TLS_VERIFY=false"
            )
        return "set MINIO_CA_BUNDLE, or MINIO_TLS_VERIFY=false"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context every client uses, or None for plain HTTP (so that a global
        AWS_CA_BUNDLE is never loaded for an http endpoint)."""
        return tls_context(self.tls_verify, self.ca_bundle) if self.https else None


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
    looks_like_uri = src is not None and (
        "://" in src or src.lower().startswith(("s3:", "minio:")) or is_registry_uri(src)
    )
    if command != "publish" and src is not None and dest is None and not looks_like_uri:
        return None, src  # a lone path is DEST; the source comes from flags or environment
    return src, dest


def _bucket_and_prefix(r: _Reader, command: Command, src: str | None) -> tuple[str, str]:
    if src is not None and command != "publish" and is_registry_uri(src):
        return "", ""  # resolved at run time
    if src is not None:
        where = "S3_URI" if command == "publish" else "SRC_URI"
        return r.parse((where, src), parse_s3_uri, ("", ""))
    bucket = r.get("MINIO_BUCKET", "--bucket", bucket_name, "")
    prefix = r.get("MODEL_PREFIX", "--prefix", normalise_prefix, "")
    if command in ("fetch", "sidecar", "publish") and r.find("MINIO_BUCKET", "--bucket") is None:
        r.problems.append("bucket: not set (pass s3://BUCKET/PREFIX/, --bucket or MINIO_BUCKET)")
    return bucket, prefix


def _registry_ref(r: _Reader, command: Command, src: str | None) -> RegistryRef | None:
    if src is None or command == "publish" or not is_registry_uri(src):
        if getattr(r.ns, "alias", None) and not getattr(r.ns, "register", None):
            r.problems.append("--alias: only with --register NAME")
        return None
    return r.parse(("SRC_URI", src), parse_registry_uri, None)


def _registry_settings(r: _Reader) -> RegistrySettings:
    """MLflow's and Kubeflow's own variables; the secrets are read directly (never quoted)."""
    names = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
    secret = {name: r.env.get(name, "").strip() or None for name in names}
    return RegistrySettings(
        mlflow_uri=r.get("MLFLOW_TRACKING_URI", None, http_url, None),
        mlflow_token=secret["MLFLOW_TRACKING_TOKEN"],
        mlflow_username=r.get("MLFLOW_TRACKING_USERNAME", None, str, None),
        mlflow_password=secret["MLFLOW_TRACKING_PASSWORD"],
        mlflow_insecure_tls=r.get("MLFLOW_TRACKING_INSECURE_TLS", None, parse_bool, False),
        mlflow_cert_path=r.get("MLFLOW_TRACKING_SERVER_CERT_PATH", None, str, None),
        kubeflow_base_url=r.get("MODEL_REGISTRY_BASE_URL", None, str, None),
        kubeflow_scheme=r.get("MODEL_REGISTRY_SCHEME", None, choice(("http", "https")), "http"),
        kubeflow_token_file=r.get("MODEL_REGISTRY_TOKEN_FILE", None, absolute, None),
    )


def _dest(r: _Reader, dest_arg: str | None) -> Path:
    if dest_arg is not None:
        return r.parse(("DEST", dest_arg), absolute, Path("/"))
    if r.find("MODEL_CACHE_DIR", "--dest") is None:
        r.problems.append("DEST: not set (pass DEST, --dest or MODEL_CACHE_DIR)")
    return r.get("MODEL_CACHE_DIR", "--dest", absolute, Path("/"))


def _local_dir(r: _Reader, text: str | None) -> Path | None:
    if text is None:
        r.problems.append(f"LOCAL_DIR: not given (usage: {USAGE['publish']})")
        return None
    path = r.parse(("LOCAL_DIR", text), absolute, None)
    if path is not None and not path.is_dir():
        r.problems.append(f"LOCAL_DIR: not a directory, got {text!r}")
    return path


def _endpoint(r: _Reader) -> str | None:
    scheme = "https" if r.get("S3_USE_HTTPS", None, parse_bool, True) else "http"
    names = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL", "S3_ENDPOINT")
    return r.get(names, "--endpoint", lambda text: _no_path(http_url(text, scheme)), None)


def _no_path(url: str) -> str:
    # SigV4 signs the path as the server sees it: S3 cannot sit under one (issue 13).
    if urlsplit(url).path:
        raise ValueError(
            "expected an endpoint without a path (S3 cannot be served under one; "
            "the bucket goes in MINIO_BUCKET or s3://BUCKET/PREFIX/)"
        )
    return url


def _whole_bucket(r: _Reader, command: Command, bucket: str, prefix: str, src: str | None) -> bool:
    """An unset or "/" prefix lists every model in the bucket, and a fetch would download them
    all into one directory (issue 13): only with FETCH_WHOLE_BUCKET=true."""
    whole = r.get("FETCH_WHOLE_BUCKET", None, parse_bool, False)
    if command in ("fetch", "sidecar") and bucket and not prefix and not whole:
        r.problems.append(
            f"{'SRC_URI' if src else 'MODEL_PREFIX'}: empty, which would fetch the whole bucket "
            "(name the model's prefix, such as model/version/, or set FETCH_WHOLE_BUCKET=true)"
        )
    return whole


def _proxies(r: _Reader) -> ProxyRules:
    """Lower case first, as curl reads them; upper case too, as OpenShift injects them."""
    fallback = ("all_proxy", "ALL_PROXY")
    http = r.get(("http_proxy", "HTTP_PROXY", *fallback), None, parse_proxy, None)
    https = r.get(("https_proxy", "HTTPS_PROXY", *fallback), None, parse_proxy, None)
    none: tuple[str, ...] = ()
    no_proxy = r.get(("no_proxy", "NO_PROXY"), None, parse_no_proxy, none)
    return ProxyRules(http, https, no_proxy)


_KEY_PAIRS = (
    ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
)


def _key_names(r: _Reader) -> str:
    """Which variables the keys came from (names only): wrong-key messages say what to fix."""
    for key_name, secret_name in _KEY_PAIRS:
        if r.env.get(key_name, "").strip() and r.env.get(secret_name, "").strip():
            return f"{key_name} / {secret_name}"
    return "botocore's credential chain (no keys set)"


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


def _ca_source(r: _Reader) -> str | None:
    found = r.find(("MINIO_CA_BUNDLE", "AWS_CA_BUNDLE"))
    return found[0] if found else None


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
    outage_tolerance: float
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
    skip_format_checks: frozenset[str]
    termination_log: Path


def _settings(r: _Reader, command: Command, stderr_isatty: bool) -> _Settings:
    """The settings that are one lookup each, in the order of the Config fields."""
    verify_mode: VerifyMode = r.get("FETCH_VERIFY", "--verify", choice(VERIFY_MODES), "fast")
    progress = r.get("FETCH_PROGRESS", None, parse_bool, stderr_isatty)
    return _Settings(
        anonymous=r.get("awsAnonymousCredential", None, parse_bool, False),
        region=r.get(("AWS_REGION", "AWS_DEFAULT_REGION"), "--region", region, "us-east-1"),
        concurrency=r.get("FETCH_CONCURRENCY", "--concurrency", int_in(1, 1024), 16),
        part_size=r.get("FETCH_PART_SIZE", "--part-size", part_size, 32 * MiB),
        include=r.globs("--include", ("FETCH_INCLUDE", "STORAGE_ALLOW_PATTERNS")),
        exclude=r.globs("--exclude", ("FETCH_EXCLUDE", "STORAGE_IGNORE_PATTERNS")),
        verify_mode=verify_mode,
        retries=r.get("FETCH_RETRIES", "--retries", int_in(1, 100), 8),
        outage_tolerance=r.get("FETCH_OUTAGE_TOLERANCE", "--outage-tolerance", seconds, 120.0),
        connect_timeout=r.get("FETCH_CONNECT_TIMEOUT", "--connect-timeout", seconds, 10.0),
        read_timeout=r.get("FETCH_READ_TIMEOUT", "--read-timeout", seconds, 60.0),
        deadline=r.get("FETCH_DEADLINE", "--deadline", seconds, None),
        metrics_port=r.get("METRICS_PORT", "--metrics-port", int_in(0, 65535), None),
        metrics_host=r.get("METRICS_HOST", None, _host, "0.0.0.0"),
        pushgateway_url=r.get("PUSHGATEWAY_URL", None, http_url, None),
        metrics_textfile=r.get("METRICS_TEXTFILE", None, absolute, None),
        log_format=r.get("LOG_FORMAT", "--log-format", choice(LOG_FORMATS), _tty(stderr_isatty)),
        log_level=r.get("LOG_LEVEL", "--log-level", choice(LOG_LEVELS, _ALIASES), "info"),
        progress=progress if getattr(r.ns, "progress", None) is None else r.ns.progress,
        progress_interval=r.get("FETCH_PROGRESS_INTERVAL", None, seconds, 5.0),
        watch_interval=r.get("FETCH_WATCH_INTERVAL", None, seconds, None),
        lease_ttl=r.get("FETCH_LEASE_TTL", None, seconds, 30.0),
        workers=r.get("FETCH_WORKERS", "--workers", int_in(1, 64), 1),
        direct_io=r.get("FETCH_DIRECT_IO", None, parse_bool, True),
        full=bool(getattr(r.ns, "full", False)) or (command == "verify" and verify_mode == "full"),
        skip_format_checks=r.get(
            "FETCH_SKIP_FORMAT_CHECKS", "--skip-format-checks", parse_families, frozenset()
        ),
        termination_log=r.get(
            "FETCH_TERMINATION_LOG", None, absolute, Path("/dev/termination-log")
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
    command, ns, problems = parse_command_line(argv)
    r = _Reader(ns, env)
    r.problems.extend(problems)
    src, dest_arg = _positionals(ns, command)
    if src is None and command in ("fetch", "sidecar") and (found := r.find("MODEL_URI")):
        src = found[1]
    registry_ref = _registry_ref(r, command, src)
    bucket, prefix = _bucket_and_prefix(r, command, src)
    if command == "publish":
        local_dir = _local_dir(r, getattr(ns, "local_dir", None))
        dest = local_dir or Path("/")
    else:
        local_dir, dest = None, _dest(r, dest_arg)
    endpoint = _endpoint(r)
    access_key, secret_key, session_token = _credentials(r)
    tls_verify, ca_bundle = _tls(r, endpoint)
    anonymous_with_keys = bool(access_key) and bool(
        r.get("awsAnonymousCredential", None, parse_bool, False)
    )
    config = Config(
        command=command,
        endpoint=endpoint,
        bucket=bucket,
        prefix=prefix,
        whole_bucket=_whole_bucket(r, command, bucket, prefix, src),
        dest=dest,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        tls_verify=tls_verify,
        ca_bundle=ca_bundle,
        ca_source=_ca_source(r) if ca_bundle else None,
        key_source=_key_names(r),
        notices=(
            ("awsAnonymousCredential=true: requests are unsigned, the access keys set are ignored",)
            if anonymous_with_keys
            else ()
        ),
        local_dir=local_dir,
        identity=_identity(r, hostname),
        serve_cmd=ns.serve_cmd,
        registry_ref=registry_ref,
        registry=_registry_settings(r),
        manifest_version=r.get("FETCH_MANIFEST_VERSION", None, str, None),
        register=getattr(ns, "register", None),
        register_alias=getattr(ns, "alias", None),
        trust=read_trust(r.find, r.problems),
        proxies=_proxies(r),
        in_pod=r.find("KUBERNETES_SERVICE_HOST") is not None,
        **_settings(r, command, stderr_isatty),
    )
    if r.problems:
        # How to report it: the settings' own log format and termination log, where readable.
        raise ConfigError(r.problems, config.log_format, config.termination_log)
    return config
