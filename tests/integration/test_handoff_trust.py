"""The trust boundary at hand-off (issue 12): the serving process does not inherit the S3
credentials unless FETCH_KEEP_CREDENTIALS=true, and secret flag values never reach the log.
The serving command is a real program (`env`, `sh`), exec'd by the fetcher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fetcher.handoff import redacted
from tests.helpers import Result

CREDENTIALS = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")  # fmt: skip


def _env_of(res: Result) -> dict[str, str]:
    return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)


def test_serving_command_gets_no_credentials(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result]
) -> None:
    put("config.json", b"{}")
    res = fetch("--", "env", MARKER="kept")
    assert res.code == 0, res.stderr
    child = _env_of(res)
    assert child["MARKER"] == "kept"  # the rest of the environment is handed on
    assert not set(CREDENTIALS) & set(child), sorted(set(CREDENTIALS) & set(child))
    (handoff,) = res.events("handoff")
    assert handoff["credentials_removed"] == ["MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"]


def test_keep_credentials_hands_them_on(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result]
) -> None:
    put("config.json", b"{}")
    res = fetch("--", "env", FETCH_KEEP_CREDENTIALS="true")
    assert res.code == 0, res.stderr
    assert "MINIO_SECRET_KEY" in _env_of(res)


def test_secret_flags_are_redacted_in_the_logged_command(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    res = fetch("--", "sh", "-c", "exit 0", "x", "--api-key", "sk-LIVE", "--db-password=hunter2",
                "--token", "tok", "--port", "8000")  # fmt: skip
    assert res.code == 0, res.stderr
    (handoff,) = res.events("handoff")
    shown = ["sh", "-c", "exit 0", "x", "--api-key", "***", "--db-password=***",
             "--token", "***", "--port", "8000"]  # fmt: skip
    assert handoff["command"] == shown
    for secret in ("sk-LIVE", "hunter2", 'tok"'):
        assert secret not in res.stderr


def test_redaction_rules() -> None:
    assert redacted(["vllm", "--hf-token", "x", "--client-secret=y", "--model", "m"]) == [
        "vllm", "--hf-token", "***", "--client-secret=***", "--model", "m",
    ]  # fmt: skip
    assert redacted(["s", "--secret", "a", "--tokenizer", "t"]) == [
        "s", "--secret", "***", "--tokenizer", "t",
    ]  # fmt: skip
