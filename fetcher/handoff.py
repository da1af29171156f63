"""Hand-off: flush, then `os.execvp` the serving command in place of the fetcher.

exec keeps the PID, the environment and the signal disposition, so vLLM becomes the process
that Kubernetes signals and whose exit status ends the container; no wrapper stays behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import NoReturn

from fetcher.errors import HandoffFailed
from fetcher.observe import log


def exec_serve(cmd: Sequence[str]) -> NoReturn:
    log.event("handoff", f"starting {cmd[0]}", command=list(cmd), pid=os.getpid())
    log.flush()
    # Python ignores SIGPIPE and SIGXFSZ; an exec'd server must get the defaults back, as
    # subprocess's restore_signals gives a child (else `yes | head -1` style writes fail).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execvp(cmd[0], list(cmd))
    except OSError as exc:
        raise HandoffFailed(f"cannot run serving command {cmd[0]!r}: {exc.strerror}") from exc
