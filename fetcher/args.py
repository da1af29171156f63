"""The command line: subcommands, flags (each naming its environment variable), help text.

Parsing only: `parse_command_line` returns the command and an argparse namespace, and
`config.load` turns them, with the environment, into the `Config`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from difflib import get_close_matches
from typing import Any, Literal, NoReturn

from fetcher import __version__
from fetcher.errors import ConfigError

Command = Literal["fetch", "sidecar", "verify", "status", "publish"]
COMMANDS: tuple[Command, ...] = ("fetch", "sidecar", "verify", "status", "publish")


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
# Issue 12: who must have signed the model (fetch), and how publish signs it.
TRUST_FLAGS: tuple[_Flag, ...] = (
    ("--signer-key", "PEM[,PEM]", "FETCH_SIGNER_KEY",
     "trusted public keys; the model must carry a valid signature by one of them"),
    ("--signer-cert", "PEM", "FETCH_SIGNER_CERT",
     "CA bundle the signing certificate must chain to (needs --signer-identity)"),
    ("--signer-identity", "NAME", "FETCH_SIGNER_IDENTITY",
     "the signing certificate's SAN (e-mail, DNS, URI) or subject"),
    ("--model-digest", "sha256:HEX", "FETCH_MODEL_DIGEST", "pin the signature's root digest"),
)  # fmt: skip
PUBLISH_FLAGS: tuple[_Flag, ...] = (
    ("--sign-key", "PEM", "FETCH_SIGN_KEY", "EC private key: write model.sig and .model-parts.sig"),
    ("--sign-cert-chain", "PEM", "FETCH_SIGN_CERT_CHAIN",
     "signing certificate (first) and its chain: sign with the certificate method"),
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
    ("--outage-tolerance", "DURATION", "FETCH_OUTAGE_TOLERANCE",
     "keep waiting this long for an unreachable source (default 2m)"),
    ("--connect-timeout", "DURATION", "FETCH_CONNECT_TIMEOUT", "e.g. 10s, 500ms (default 10s)"),
    ("--read-timeout", "DURATION", "FETCH_READ_TIMEOUT", "per socket read (default 60s)"),
    ("--deadline", "DURATION", "FETCH_DEADLINE", "give up after this long, e.g. 2h (default none)"),
    ("--workers", "N", "FETCH_WORKERS", "workers sharing the download, 1..64 (default 1)"),
    ("--verify", "MODE", "FETCH_VERIFY", "fast, or full to rehash every file (default fast)"),
    ("--metrics-port", "PORT", "METRICS_PORT", "serve /metrics on this port; 0 picks a free one"),
)  # fmt: skip
_PUBLISH_USES = ("--part-size", "--include", "--exclude", "--connect-timeout", "--read-timeout")
_OUTPUT_FLAGS: tuple[_Flag, ...] = (
    ("--log-format", "FORMAT", "LOG_FORMAT", "json or text (default json unless stderr is a tty)"),
    ("--log-level", "LEVEL", "LOG_LEVEL", "debug, info, warning or error (default info)"),
)
# Issue 16: every command that checks a model (all but status) takes it.
_CHECKS_FLAG: _Flag = ("--skip-format-checks", "FAMILIES", "FETCH_SKIP_FORMAT_CHECKS",
                       "turn off format checks: safetensors, gguf, index, json or all")  # fmt: skip
_DEST_FLAG: _Flag = ("--dest", "DIR", "MODEL_CACHE_DIR", "model directory, when DEST is not given")

_EPILOG = """\
environment only:
  MINIO_ACCESS_KEY, MINIO_SECRET_KEY (or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY),
  AWS_SESSION_TOKEN, awsAnonymousCredential, S3_USE_HTTPS, MINIO_TLS_VERIFY, S3_VERIFY_SSL,
  MINIO_CA_BUNDLE, AWS_CA_BUNDLE, PUSHGATEWAY_URL, METRICS_TEXTFILE, FETCH_PROGRESS_INTERVAL,
  FETCH_WATCH_INTERVAL, FETCH_LEASE_TTL, FETCH_TERMINATION_LOG, FETCH_DIRECT_IO, POD_NAME,
  FETCH_MANIFEST_VERSION, MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN,
  MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_INSECURE_TLS,
  MLFLOW_TRACKING_SERVER_CERT_PATH, MODEL_REGISTRY_BASE_URL, MODEL_REGISTRY_SCHEME,
  MODEL_REGISTRY_TOKEN_FILE,
  FETCH_WHOLE_BUCKET (an empty prefix is refused without it), HTTP_PROXY, HTTPS_PROXY,
  NO_PROXY (curl's rules, for every request)
Without keys, botocore's credential chain (web identity, shared config) decides.
The command may be left out: "model-fetcher s3://bucket/prefix/ /mnt/models" fetches."""

USAGE = {
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
incomplete); 4 integrity (checksum, safetensors, GGUF, index, JSON); 5 local cache (space,
permissions, a read-only volume that is incomplete); 127 the serving command is not found
(checked before any download); 143 SIGTERM, 130 SIGINT. The reason is one line on stderr and
in FETCH_TERMINATION_LOG. A first word that is not a command or a source URI (s3://, models:/,
model-registry://) is a mistyped command (exit 2), never a DEST; --version prints the version."""
_COMMAND_EPILOG = {
    "fetch": _FETCH_EXITS,
    "sidecar": """Serves /metrics, /healthz and /readyz on METRICS_HOST:METRICS_PORT, by default
0.0.0.0:9090 (pods are scraped on their IP). exit codes: as fetch while fetching (2, 3, 4, 5;
143 SIGTERM, 130 SIGINT); 0 when stopped once the model is ready (it stays in place).""",
    "status": """exit codes: 0 the state was read (the JSON says whether it is complete);
5 the cache state (DEST/.fetcher/state.json) cannot be read.""",
    "publish": """Uploads the files of LOCAL_DIR that --include / --exclude select (globs on the
path or the file name); .git/ and .cache/huggingface/ are skipped (logged: publish_skipped).
exit codes: 0 published; 2 usage or configuration; 3 S3 (auth, no such bucket, unreachable);
4 a model file is invalid or its name would be refused by a fetcher; 5 LOCAL_DIR unreadable.""",
    "verify": """exit codes:
  0  every recorded file is present and unchanged (--full: and hashes as recorded),
     and the format checks pass (safetensors, GGUF, indexes, JSON files)
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
        usage=USAGE[name],
        help=summary,
        description=summary,
        epilog=_COMMAND_EPILOG.get(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if name in ("fetch", "sidecar"):
        parser.add_argument(
            "src", nargs="?", metavar="SRC_URI",
            help="s3://BUCKET/PREFIX/, models:/NAME/VERSION, models:/NAME@ALIAS or "
            "model-registry://[HOST:PORT/]MODEL[/VERSION] [env MODEL_URI]",
        )  # fmt: skip
    if name == "publish":
        parser.add_argument("local_dir", nargs="?", metavar="LOCAL_DIR", help="model to upload")
        parser.add_argument("src", nargs="?", metavar="S3_URI", help="s3://BUCKET/PREFIX/")
        parser.add_argument("--register", metavar="NAME", help="register in MLflow as NAME")
        parser.add_argument("--alias", metavar="ALIAS", help="with --register: move ALIAS to it")
    else:
        parser.add_argument("dest_arg", nargs="?", metavar="DEST", help="model directory")
        _add_flags(parser, "location", [_DEST_FLAG])
    if name == "verify":
        parser.add_argument("--full", action="store_true", help="rehash every file")
    if name in ("fetch", "sidecar", "publish"):
        _add_flags(parser, "source", _SOURCE_FLAGS)
        # publish lists only what it uses (issue 13): it once showed workers, verify, ...
        used = _PUBLISH_USES if name == "publish" else None
        _add_flags(parser, "transfer", [f for f in _TRANSFER_FLAGS if not used or f[0] in used])
    if name != "status":
        _add_flags(parser, "checks", [_CHECKS_FLAG])
    if name in ("fetch", "sidecar"):
        _add_flags(parser, "trust", TRUST_FLAGS)
    if name == "publish":
        _add_flags(parser, "signing", PUBLISH_FLAGS)
    output = _add_flags(parser, "output", _OUTPUT_FLAGS)
    if name in ("fetch", "sidecar"):  # verify, status and publish draw no progress bar
        output.add_argument(
            "--progress", action=argparse.BooleanOptionalAction,
            help="terminal progress bar (default on when stderr is a tty) [env FETCH_PROGRESS]",
        )  # fmt: skip
    return parser


def build_parser(
    commands: Sequence[Command] = COMMANDS,
) -> tuple[_Parser, dict[Command, _Parser]]:
    """The top-level parser (for --help) and one parser per command asked for."""
    top = _Parser(
        prog="model-fetcher", epilog=_EPILOG,
        description="Fill a model cache directory from MinIO/S3, verified, then hand off.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    top.add_argument("--version", action="store_true", help="print the version and exit")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    return top, {name: _add_command(sub, name) for name in commands}


def parse_command_line(argv: Sequence[str]) -> tuple[Command, argparse.Namespace, list[str]]:
    """Returns the command, its namespace, and problems with the serving command after "--"."""
    args, problems = list(argv), []
    serve: list[str] | None = None
    if "--" in args:
        cut = args.index("--")
        args, serve = args[:cut], args[cut + 1 :]
    if args and args[0] in ("-h", "--help"):
        build_parser()[0].print_help()
        raise SystemExit(0)
    if args and args[0] == "--version":
        print(f"model-fetcher {__version__}")
        raise SystemExit(0)
    command: Command = "fetch"  # KServe passes "SRC_URI DEST" with no command
    if args and args[0] in COMMANDS:
        first = args.pop(0)
        command = next(name for name in COMMANDS if name == first)
    elif args and (typo := _unknown_command(args[0])):
        raise ConfigError([typo])
    # Only this command's parser: all five cost ~5 ms of every start (issue 14).
    namespace = build_parser((command,))[1][command].parse_intermixed_args(args)
    namespace.serve_cmd = tuple(serve or ())
    if serve is not None and command != "fetch":
        problems.append(f"--: a serving command is only allowed with fetch, not {command}")
    elif serve == []:
        problems.append("--: expected a serving command after '--'")
    return command, namespace, problems


# What may stand first without a command: a source URI (KServe's "SRC_URI DEST"). Registry
# schemes resolve to s3:// later; a path (with a "/") is DEST.
URI_SCHEMES = ("s3://", "minio://", "models:/", "model-registry://")


def _unknown_command(word: str) -> str | None:
    """A bare word first is a mistyped command, not a DEST: `verfy` once downloaded the whole
    model into ./verfy and exited 0 (issue 13)."""
    if word.startswith("-") or "/" in word or word.lower().startswith(URI_SCHEMES):
        return None
    close = ["--help"] if word.lower() == "help" else get_close_matches(word, COMMANDS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"unknown command {word!r}{hint}: expected one of {', '.join(COMMANDS)}, "
        "or a source URI such as s3://BUCKET/PREFIX/"
    )
