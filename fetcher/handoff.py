"""Hand-off: flush, then `os.execvp` the serving command in place of the fetcher.

exec keeps the PID, the environment and the signal disposition, so vLLM becomes the process
that Kubernetes signals and whose exit status ends the container; no wrapper stays behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from typing import NoReturn

from fetcher.errors import HandoffFailed
from fetcher.observe import log

# The fetcher's S3 credentials. A model with trust_remote_code runs its own Python inside the
# serving process, so by default that process does not inherit them (issue 12).
CREDENTIALS = (
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
# --api-key, --hf-token, --db-password, --client-secret ...; not --tokenizer (a path).
_SECRET_FLAG = re.compile(
    r"--?([\w-]*api[-_]?key|[\w-]*token|[\w-]*(password|passwd|secret)[\w-]*)", re.I
)


def check_serve(cmd: Sequence[str]) -> None:
    """Before any download: a typo in the serving command is found in a second, not after
    100 GB have arrived (issue 13). exec may still fail later (a bad interpreter line)."""
    if shutil.which(cmd[0]) is None:
        where = "is not an executable file" if "/" in cmd[0] else "is not found on PATH"
        raise HandoffFailed(f"serving command {cmd[0]!r} {where}; nothing was downloaded")


def serving_env(env: Mapping[str, str], keep_credentials: bool) -> dict[str, str]:
    if keep_credentials:
        return dict(env)
    return {name: value for name, value in env.items() if name not in CREDENTIALS}


def redacted(cmd: Sequence[str]) -> list[str]:
    """The command line for the log: values of secret-looking flags become ***."""
    out: list[str] = []
    hide_next = False
    for arg in cmd:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if _SECRET_FLAG.fullmatch(flag):
            out.append(f"{flag}=***" if eq else arg)
            hide_next = not eq
        else:
            out.append(arg)
    return out


def exec_serve(
    cmd: Sequence[str], env: Mapping[str, str], keep_credentials: bool = False
) -> NoReturn:
    child_env = serving_env(env, keep_credentials)
    removed = sorted(set(env) - set(child_env))
    log.event(
        "handoff",
        f"starting {cmd[0]}",
        command=redacted(cmd),
        pid=os.getpid(),
        credentials_removed=removed,
    )
    log.flush()
    # Python ignores SIGPIPE and SIGXFSZ; an exec'd server must get the defaults back, as
    # subprocess's restore_signals gives a child (else `yes | head -1` style writes fail).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execvpe(cmd[0], list(cmd), child_env)
    except OSError as exc:
        raise HandoffFailed(f"cannot run serving command {cmd[0]!r}: {exc.strerror}") from exc
