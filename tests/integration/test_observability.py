"""Issue 5: metrics while and after a fetch, seen by a real Prometheus and Pushgateway; the
sidecar's health endpoints; progress lines, the terminal bar, `status`, and drift watching.

Prometheus and the Pushgateway are the Debian packages, installed by `promstack` when missing
and run on 127.0.0.1 free ports. Fetches are slowed by the fault proxy's Throttle so that a
scrape, a readiness probe or a progress line can land in the middle of one.
"""

from __future__ import annotations

import errno
import http.client
import itertools
import json
import os
import pty
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xxhash
from prometheus_client.parser import text_string_to_metric_families

from devtools.seaweed import SeaweedServer
from fetcher.cache.layout import Layout
from fetcher.observe.progress import Progress
from tests.faults.proxy import Fault, FaultProxy, Throttle
from tests.helpers import BUCKET, Result, pod_env, tree

from . import promstack

# The first test may install the packages (apt update + install, each tried twice at most).
pytestmark = pytest.mark.timeout(4 * promstack.STEP_TIMEOUT + 120)

MiB = 1 << 20
ZERO = timedelta(0)
# Issue 5: these names and types are a contract with dashboards and alerts.
CONTRACT = {
    "model_fetcher_bytes_downloaded": "counter",
    "model_fetcher_bytes_expected": "gauge",
    "model_fetcher_bytes_cached": "gauge",
    "model_fetcher_files": "counter",
    "model_fetcher_request_duration_seconds": "histogram",
    "model_fetcher_inflight_requests": "gauge",
    "model_fetcher_retries": "counter",
    "model_fetcher_checksum_failures": "counter",
    "model_fetcher_fetch_duration_seconds": "gauge",
    "model_fetcher_last_success_timestamp_seconds": "gauge",
    "model_fetcher_up": "gauge",
}
ROOT = Path(__file__).resolve().parents[2]


# --- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bins() -> promstack.Binaries:
    return promstack.ensure_installed()


@pytest.fixture(scope="module")
def scrape_port() -> int:
    """The METRICS_PORT that Prometheus scrapes, chosen before Prometheus starts."""
    return promstack.free_port()


@pytest.fixture(scope="module")
def prometheus(
    bins: promstack.Binaries, scrape_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[promstack.Server]:
    server = promstack.start_prometheus(bins, tmp_path_factory.mktemp("prometheus"), scrape_port)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pushgateway(
    bins: promstack.Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[promstack.Server]:
    server = promstack.start_pushgateway(bins, tmp_path_factory.mktemp("pushgateway"))
    yield server
    server.stop()


def throttle(proxy: FaultProxy, prefix: str, bytes_per_s: float) -> None:
    """Every object GET under the prefix (not the LIST) at a slow, steady rate."""
    proxy.add_fault(Fault(Throttle(bytes_per_s), method="GET", path_contains=prefix, times=None))


def model(put: Callable[[str, bytes], None], size: int, name: str = "model.bin") -> bytes:
    data = random.Random(size).randbytes(size)
    put(name, data)
    return data


# --- running the fetcher ---------------------------------------------------------------------


def full_env(env: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}


class Running:
    """`model-fetcher` as a child process that the test watches while it works."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.err_path = workdir / f"stderr-{uuid.uuid4().hex[:6]}.log"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fetcher", *args],
                env=full_env(env),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait(self, timeout: float = 60) -> Result:
        code = self.proc.wait(timeout)
        return Result(code, "", self.err_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def popen(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str, env: dict[str, str]) -> Running:
        started.append(Running(list(args), env, tmp_path))
        return started[-1]

    yield start
    for run in started:
        run.kill()


@pytest.fixture
def env(s3_server: SeaweedServer, prefix: str, dest: Path) -> dict[str, str]:
    return pod_env(s3_server, prefix, dest)


def http_get(port: int, path: str, timeout: float = 2) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def content_type(port: int, accept: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float = 20, every: float = 0.05) -> Any:
    """Poll until `check()` returns something truthy; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except OSError:
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {check}")


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def value(text: str, name: str, **labels: str) -> float:
    hits = [v for lab, v in samples(text, name) if labels.items() <= lab.items()]
    assert len(hits) == 1, f"{name}{labels}: {hits} in\n{text}"
    return hits[0]


# --- Prometheus and the Pushgateway -----------------------------------------------------------


def test_prometheus_scrapes_progress_during_a_fetch(
    prometheus: promstack.Server,
    scrape_port: int,
    proxy: FaultProxy,
    put: Callable[[str, bytes], None],
    env: dict[str, str],
    prefix: str,
    dest: Path,
    popen: Callable[..., Running],
) -> None:
    data = model(put, 10 * MiB)
    throttle(proxy, prefix, 2 * MiB)
    env |= {"MINIO_ENDPOINT": proxy.endpoint, "METRICS_PORT": str(scrape_port)}
    run = popen(env={**env, "METRICS_HOST": "127.0.0.1"})
    promql = f'model_fetcher_bytes_downloaded_total{{job="model-fetcher",prefix="{prefix}"}}'
    seen: list[float] = []
    while run.proc.poll() is None:
        for hit in promstack.query(prometheus, promql):
            assert hit["metric"]["bucket"] == BUCKET
            assert hit["metric"]["instance"] == f"127.0.0.1:{scrape_port}"
            if not seen or float(hit["value"][1]) != seen[-1]:
                seen.append(float(hit["value"][1]))
        time.sleep(0.2)
    result = run.wait()
    assert result.code == 0, result.stderr
    assert tree(dest) == {"model.bin": data}
    assert seen == sorted(seen), f"the counter went down: {seen}"
    during = [v for v in seen if 0 < v < len(data)]
    assert len(during) >= 2, f"Prometheus saw no progress mid-fetch, only {seen}"


def test_pushgateway_holds_the_final_values(
    pushgateway: promstack.Server,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    prefix: str,
) -> None:
    data = model(put, 3 * MiB + 17)
    pod = f"vllm-{uuid.uuid4().hex[:8]}"
    result = fetch(PUSHGATEWAY_URL=pushgateway.url, POD_NAME=pod)
    assert result.code == 0, result.stderr
    text = pushgateway.get("/metrics").decode()
    group = {"job": "model-fetcher", "instance": pod, "bucket": BUCKET, "prefix": prefix}
    assert value(text, "model_fetcher_bytes_downloaded_total", **group) == len(data)
    assert value(text, "model_fetcher_bytes_expected", **group) == len(data)
    assert value(text, "model_fetcher_files_total", result="downloaded", **group) == 1
    assert value(text, "model_fetcher_up", **group) == 1
    assert value(text, "model_fetcher_last_success_timestamp_seconds", **group) > time.time() - 60
    assert value(text, "push_time_seconds", job="model-fetcher", instance=pod) > 0


def test_a_failed_fetch_pushes_up_0(
    pushgateway: promstack.Server, fetch: Callable[..., Result]
) -> None:
    pod = f"vllm-{uuid.uuid4().hex[:8]}"
    result = fetch(PUSHGATEWAY_URL=pushgateway.url, POD_NAME=pod)  # nothing under the prefix
    assert result.code == 3, result.stderr
    text = pushgateway.get("/metrics").decode()
    assert value(text, "model_fetcher_up", job="model-fetcher", instance=pod) == 0
    assert value(text, "model_fetcher_last_success_timestamp_seconds", instance=pod) == 0
    assert value(text, "model_fetcher_fetch_duration_seconds", instance=pod) > 0


def test_an_unreachable_pushgateway_is_only_a_warning(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    data = model(put, 1000)
    result = fetch(PUSHGATEWAY_URL=f"http://127.0.0.1:{promstack.free_port()}")
    assert result.code == 0, result.stderr
    assert result.events("push_failed")
    assert tree(dest) == {"model.bin": data}


def test_promtool_accepts_the_exposition(
    bins: promstack.Binaries,
    put: Callable[[str, bytes], None],
    env: dict[str, str],
    popen: Callable[..., Running],
) -> None:
    model(put, 2 * MiB)
    port = promstack.free_port()
    run = popen("sidecar", env={**env, "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"})
    wait_for(lambda: http_get(port, "/readyz")[0] == 200)
    status, text = http_get(port, "/metrics")
    assert status == 200
    check = subprocess.run(
        [bins.promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    assert value(text, "model_fetcher_bytes_downloaded_total") == 2 * MiB
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert CONTRACT.items() <= families.items(), families
    assert content_type(port, "") == "text/plain; version=0.0.4; charset=utf-8"
    # What Prometheus asks for; Prometheus 3 fails a scrape whose Content-Type is not versioned.
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    assert content_type(port, accept).startswith("application/openmetrics-text; version=1.0.0")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(10).code == 0


# --- the sidecar --------------------------------------------------------------------------------


def test_sidecar_readyz_turns_ready_when_the_model_is_complete(
    proxy: FaultProxy,
    put: Callable[[str, bytes], None],
    env: dict[str, str],
    prefix: str,
    dest: Path,
    popen: Callable[..., Running],
) -> None:
    data = model(put, 4 * MiB)
    throttle(proxy, prefix, 2 * MiB)
    port = promstack.free_port()
    env |= {"MINIO_ENDPOINT": proxy.endpoint, "METRICS_PORT": str(port)}
    run = popen("sidecar", env={**env, "METRICS_HOST": "127.0.0.1"})
    first = wait_for(lambda: http_get(port, "/readyz"))
    assert first[0] == 503, first
    assert http_get(port, "/healthz")[0] == 200
    wait_for(lambda: http_get(port, "/readyz")[0] == 200)
    assert tree(dest) == {"model.bin": data}, "ready before the model was in place"
    assert http_get(port, "/healthz")[0] == 200
    assert run.proc.poll() is None, "the sidecar must keep running once ready"
    # An idle keep-alive connection (a kubelet probe, a scraper) must not delay the exit.
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    idle.request("GET", "/metrics")
    idle.getresponse().read()
    began = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    result = run.wait(10)
    idle.close()
    assert result.code == 0, result.stderr
    assert time.monotonic() - began < 5, "SIGTERM took too long"
    assert result.events("ready") and result.events("stopping")
    assert tree(dest) == {"model.bin": data}


def test_sidecar_is_ready_while_a_silent_pushgateway_holds_the_push(
    put: Callable[[str, bytes], None],
    env: dict[str, str],
    dest: Path,
    popen: Callable[..., Running],
) -> None:
    data = model(put, 64 * 1024)
    silent = socket.socket()  # accepts, never answers: the push waits for its timeout
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        port = promstack.free_port()
        gateway = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env |= {"METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1", "PUSHGATEWAY_URL": gateway}
        run = popen("sidecar", env=env)
        began = time.monotonic()
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, timeout=20)
        assert time.monotonic() - began < 5, "readiness waited for the Pushgateway"
        assert tree(dest) == {"model.bin": data}
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait(20).code == 0
    finally:
        silent.close()


def test_sidecar_watch_reports_drift_and_leaves_files_alone(
    s3: Any,
    put: Callable[[str, bytes], None],
    env: dict[str, str],
    prefix: str,
    dest: Path,
    popen: Callable[..., Running],
) -> None:
    data = model(put, 256 * 1024)
    put("config.json", b"{}")
    files = {"model.bin": data, "config.json": b"{}"}
    port = promstack.free_port()
    env |= {"METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"}
    run = popen("sidecar", env={**env, "FETCH_WATCH_INTERVAL": "200ms"})
    wait_for(lambda: http_get(port, "/readyz")[0] == 200)
    state_before = Layout(dest).state_path.read_bytes()

    def drift() -> float:
        return value(http_get(port, "/metrics")[1], "model_fetcher_remote_drift_files")

    time.sleep(0.5)  # a few re-lists of an unchanged bucket
    assert drift() == 0
    s3.put_object(Bucket=BUCKET, Key=prefix + "model.bin", Body=data[::-1])
    wait_for(lambda: drift() == 1, timeout=10)
    assert tree(dest) == files
    assert Layout(dest).state_path.read_bytes() == state_before
    assert http_get(port, "/readyz")[0] == 200, "drift must not take a serving model out"
    time.sleep(0.5)  # more re-lists that find the same drift
    assert drift() == 1 and tree(dest) == files
    s3.delete_object(Bucket=BUCKET, Key=prefix + "model.bin")
    s3.delete_object(Bucket=BUCKET, Key=prefix + "config.json")
    wait_for(lambda: drift() == 2, timeout=10)  # the whole model gone is drift too
    assert tree(dest) == files and http_get(port, "/readyz")[0] == 200
    run.proc.send_signal(signal.SIGTERM)
    result = run.wait(10)
    assert result.code == 0, result.stderr
    assert [e["files"] for e in result.events("drift")] == [1, 2], "log once per change"


# --- textfile ---------------------------------------------------------------------------------


def test_textfile_is_replaced_atomically_with_the_final_values(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    s3_server: SeaweedServer,
    prefix: str,
    tmp_path: Path,
) -> None:
    data = model(put, 2 * MiB + 5)
    put("config.json", b"{}")
    collector = tmp_path / "textfile"
    collector.mkdir()
    path = collector / "model_fetcher.prom"
    path.write_text("# stale\n")
    old = open(path)  # noqa: SIM115 - held open across the run on purpose
    try:
        result = fetch(METRICS_TEXTFILE=str(path))
        assert result.code == 0, result.stderr
        # Replaced by rename, never rewritten in place: a reader holding the old file sees it
        # whole, and node-exporter never reads a half-written one.
        assert old.read() == "# stale\n"
        assert os.stat(path).st_ino != os.fstat(old.fileno()).st_ino
    finally:
        old.close()
    assert os.listdir(collector) == ["model_fetcher.prom"], "a temporary file was left behind"
    text = path.read_text()
    assert value(text, "model_fetcher_bytes_downloaded_total") == len(data) + 2
    assert value(text, "model_fetcher_bytes_expected") == len(data) + 2
    assert value(text, "model_fetcher_files_total", result="downloaded") == 2
    assert value(text, "model_fetcher_up") == 1
    assert value(text, "model_fetcher_fetch_duration_seconds") > 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert {"bucket", "prefix"} <= sample.labels.keys(), sample
            assert sample.labels["bucket"] == BUCKET and sample.labels["prefix"] == prefix
            allowed = {"bucket", "prefix", "result", "reason", "le"}
            if sample.name == "model_fetcher_model_info":  # one series: what is served (#15)
                allowed |= {"source", "version", "digest", "signer"}
            extra = sample.labels.keys() - allowed
            assert not extra, f"unexpected (per-file?) labels {extra} on {sample}"
    for secret in (s3_server.access_key, s3_server.secret_key):
        assert secret not in text
    assert "model.bin" not in text and "config.json" not in text


# --- progress, status, terminal ----------------------------------------------------------------


def test_progress_forced_without_a_terminal_keeps_every_line_json(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result]
) -> None:
    model(put, 1 * MiB)
    result = fetch(FETCH_PROGRESS="1", LOG_FORMAT="json")
    assert result.code == 0, result.stderr
    for line in result.stderr.splitlines():
        assert line.startswith("{"), line  # rich used to print its final bar here


def test_json_progress_lines_every_interval(
    proxy: FaultProxy,
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    prefix: str,
) -> None:
    data = model(put, 4 * MiB)
    throttle(proxy, prefix, 2 * MiB)
    result = fetch(endpoint=proxy.endpoint, FETCH_PROGRESS_INTERVAL="0.2")
    assert result.code == 0, result.stderr
    lines = result.events("progress")
    assert len(lines) >= 5, lines
    for line in lines:
        assert line["bytes_total"] == len(data)
        assert 0 <= line["bytes_done"] <= len(data)
        assert isinstance(line["mib_per_s"], float | int)
        assert line["eta_s"] is None or line["eta_s"] >= 0
    done = [line["bytes_done"] for line in lines]
    assert done == sorted(done) and done[0] < done[-1]
    assert any(line["eta_s"] for line in lines), "no ETA while bytes were arriving"
    gaps = sorted(b["ts"] - a["ts"] for a, b in itertools.pairwise(lines))
    assert 0.1 <= gaps[len(gaps) // 2] <= 0.5, gaps


def test_status_reports_the_cache_as_json(
    put: Callable[[str, bytes], None],
    fetch: Callable[..., Result],
    s3_server: SeaweedServer,
    prefix: str,
    dest: Path,
) -> None:
    weights = model(put, MiB + 3, "model.bin")
    put("sub/tokenizer.json", b'{"v": 1}')
    began = time.time()
    assert fetch().code == 0
    result = fetch("status", str(dest))
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["complete"] is True
    assert doc["source"] == {
        "endpoint": s3_server.endpoint,
        "bucket": BUCKET,
        "prefix": prefix,
        "chain": f"s3://{BUCKET}/{prefix}",  # what is served (issue 15): no registry, no manifest
    }
    assert doc["file_count"] == 2 and doc["total_bytes"] == len(weights) + 8
    want = {"model.bin": weights, "sub/tokenizer.json": b'{"v": 1}'}
    assert sorted(doc["files"]) == sorted(want)
    for rel, body in want.items():
        entry = doc["files"][rel]
        assert entry["size"] == len(body) and entry["present"] is True
        assert entry["xxh3"] == xxhash.xxh3_128(body).hexdigest()
    last = doc["last_fetch"]
    assert began - 1 <= last["finished"] <= time.time()
    finished_at = datetime.fromisoformat(last["finished_at"])
    assert abs(finished_at.timestamp() - last["finished"]) < 1 and finished_at.utcoffset() == ZERO
    assert 0 < last["duration_s"] < 60
    assert s3_server.secret_key not in result.stdout

    (dest / "model.bin").unlink()
    doc = json.loads(fetch("status", str(dest)).stdout)
    assert doc["complete"] is False and doc["files"]["model.bin"]["present"] is False


def test_terminal_progress_bar(
    proxy: FaultProxy,
    put: Callable[[str, bytes], None],
    env: dict[str, str],
    prefix: str,
    dest: Path,
) -> None:
    data = model(put, 3 * MiB)
    throttle(proxy, prefix, 3 * MiB)
    env |= {"MINIO_ENDPOINT": proxy.endpoint, "LOG_FORMAT": "text"}
    env["FETCH_PROGRESS_INTERVAL"] = "0.2"
    code, out = run_in_pty(full_env({**env, "TERM": "xterm-256color", "COLUMNS": "120"}))
    assert code == 0, out
    assert tree(dest) == {"model.bin": data}
    assert "━" in out, f"no bar drawn: {out!r}"
    assert "3.0/3.0 MiB" in out and "MiB/s" in out and re.search(r"\b1/1 files\b", out), out
    # Log lines printed while the bar is live go above it, each on a line of its own.
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert re.search(r"(^|[\r\n])\d\d:\d\d:\d\d info +fetched model\.bin", plain), plain
    assert "model ready" in plain
    assert not re.search(r"info +\d+% at", plain), "progress lines printed under a live bar"


def run_in_pty(env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run the fetcher with a pseudo-terminal as its stdin, stdout and stderr."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetcher"],
            env=env,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
        )
    finally:
        os.close(terminal)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError as exc:  # EIO: every process holding the terminal has exited
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(10)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out.decode(errors="replace")


def test_fetcher_writes_no_escape_codes_by_hand() -> None:
    """The bar is rich's job; hand-made cursor moves break on the terminals nobody tested."""
    for path in sorted((ROOT / "fetcher").glob("*.py")):
        source = path.read_text()
        for escape in ("\\x1b", "\\033", "\\u001b", "\\e[", "\x1b"):
            assert escape not in source, f"{path.name} writes {escape!r} itself"


def test_rate_and_eta_leave_resumed_bytes_out() -> None:
    """Bytes an earlier run left behind are done, but were not received at this run's rate."""
    progress = Progress(100 * MiB, 1, 5.0, bar=False)
    progress.started -= 10  # ten seconds in
    progress.resumed(60 * MiB)
    progress.add(10 * MiB)
    snap = progress.snapshot()
    assert snap["bytes_done"] == 70 * MiB
    assert snap["mib_per_s"] == pytest.approx(1.0, abs=0.05)
    assert snap["eta_s"] == pytest.approx(30, rel=0.05)


# --- verify and status at the edges ----------------------------------------------------------


def test_verify_failure_writes_one_line_to_the_termination_log(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("a.bin", b"a" * 1000)
    put("b.bin", b"b" * 1000)
    assert fetch().code == 0
    for name in ("a.bin", "b.bin"):
        (dest / name).write_bytes(b"x" * 1000)  # same size: only --full sees it
    termination = dest.parent / "termination-log"
    termination.unlink(missing_ok=True)

    res = fetch("verify", "--full")
    assert res.code == 4, res.stderr
    problems = json.loads(res.stdout)["problems"]
    assert [p.split(":")[0] for p in problems] == ["a.bin", "b.bin"]
    line = f"integrity error: verify of {dest} failed: {problems[0]} (and 1 more problem)\n"
    assert termination.read_text() == line
    assert [e["exit_code"] for e in res.events("error")] == [4]
    assert (dest / "a.bin").read_bytes() == b"x" * 1000  # verify reports, never repairs


def test_status_shows_a_finish_time_beyond_any_date_as_recorded(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], dest: Path
) -> None:
    put("config.json", b"{}")
    assert fetch().code == 0
    state_path = Layout(dest).state_path
    state = json.loads(state_path.read_text())
    state["last_fetch"]["finished"] = 1e300
    state_path.write_text(json.dumps(state))

    res = fetch("status", str(dest))
    assert res.code == 0, res.stderr
    last = json.loads(res.stdout)["last_fetch"]
    assert last["finished"] == 1e300 and "finished_at" not in last
    assert not res.events("error")


def test_status_into_a_closed_pipe_ends_quietly(
    put: Callable[[str, bytes], None], fetch: Callable[..., Result], env: dict[str, str]
) -> None:
    """`model-fetcher status | head -1`: the reader is gone before the JSON is written."""
    put("config.json", b"{}")
    assert fetch().code == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fetcher", "status"],
            env=full_env(env),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipe" not in proc.stderr and '"error"' not in proc.stderr
