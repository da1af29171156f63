"""The fault proxy against a real SeaweedFS: it relays, counts, and injects each fault."""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import random
import shutil
import socket
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import (
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from devtools import seaweed

from .proxy import (
    CHUNKED,
    Callback,
    FaultProxy,
    FlipByte,
    ResetAfter,
    RewriteBody,
    Stall,
    Status,
    Truncate,
    WrongContentRange,
    _iter_body,
)

BUCKET = "faults"
BLOB = "models/blob.bin"
SMALL = "models/small.txt"
DATA = random.Random(7).randbytes(300 * 1024)  # several 64 KiB pieces


@pytest.fixture(scope="module")
def server() -> Iterator[seaweed.SeaweedServer]:
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        with warnings.catch_warnings():
            # devtools/seaweed.py drops its handle on the server's log file without closing it.
            warnings.simplefilter("ignore", ResourceWarning)
            srv = seaweed.start_temporary()
        try:
            s3: Any = seaweed.boto3_client(srv)
            s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key=BLOB, Body=DATA)
            s3.put_object(Bucket=BUCKET, Key=SMALL, Body=b"hello")
            s3.close()
            yield srv
        finally:
            srv.stop()
            shutil.rmtree(srv.workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def direct(server: seaweed.SeaweedServer) -> Iterator[Any]:
    s3: Any = seaweed.boto3_client(server)
    yield s3
    s3.close()


@pytest.fixture
def proxy(server: seaweed.SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", server.ports["s3.port"]) as p:
        yield p


@pytest.fixture
def client(server: seaweed.SeaweedServer, proxy: FaultProxy) -> Iterator[Any]:
    """boto3 through the proxy: it signs for the proxy's host:port, and never retries."""
    s3: Any = seaweed.boto3_client(
        server,
        proxy.endpoint,
        retries={"total_max_attempts": 1},
        read_timeout=0.5,
        connect_timeout=2,
        # Let bodies with flipped bytes through, so the test can compare them.
        response_checksum_validation="when_required",
    )
    yield s3
    s3.close()


def read_until_error(body: Any) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        while chunk := body.read(4096):
            got += chunk
    except Exception as e:
        return bytes(got), e
    finally:
        body.close()
    return bytes(got), None


def test_plain_requests_pass_through_on_one_connection(client: Any, proxy: FaultProxy) -> None:
    client.put_object(Bucket=BUCKET, Key="plain/new.bin", Body=b"x" * 1000)
    assert client.head_object(Bucket=BUCKET, Key=BLOB)["ContentLength"] == len(DATA)
    assert client.get_object(Bucket=BUCKET, Key=BLOB)["Body"].read() == DATA
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="models/")
    assert [o["Key"] for o in listing["Contents"]] == [BLOB, SMALL]

    assert (proxy.count("PUT"), proxy.count("HEAD"), proxy.count("GET")) == (1, 1, 2)
    assert proxy.count(path_contains="blob.bin") == 2
    assert proxy.count(ranged=True) == 0
    assert [r.status for r in proxy.requests] == [200, 200, 200, 200]
    assert proxy.bytes_sent(path_contains="blob.bin") == len(DATA)  # HEAD sends no body
    assert {r.conn for r in proxy.requests} == {1}  # keep-alive: one client connection
    assert proxy.requests[-1].query.startswith("list-type=2")


def test_ranged_get_is_counted_as_ranged(client: Any, proxy: FaultProxy) -> None:
    resp = client.get_object(Bucket=BUCKET, Key=BLOB, Range="bytes=100-199", IfMatch="*")
    assert resp["Body"].read() == DATA[100:200]
    assert resp["ContentRange"] == f"bytes 100-199/{len(DATA)}"
    [record] = proxy.requests
    assert (record.ranged, record.range, record.if_match) == (True, "bytes=100-199", "*")
    assert proxy.count("GET", ranged=True) == 1
    assert proxy.count(ranged=False) == 0
    assert proxy.bytes_sent() == 100


def test_expect_100_continue_upload(client: Any, direct: Any, proxy: FaultProxy) -> None:
    client.put_object(Bucket=BUCKET, Key="plain/expect.bin", Body=io.BytesIO(DATA))
    [record] = proxy.requests
    assert record.headers["expect"] == "100-continue"
    assert record.status == 200
    assert direct.get_object(Bucket=BUCKET, Key="plain/expect.bin")["Body"].read() == DATA


def test_chunked_request_body_and_keep_alive(direct: Any, proxy: FaultProxy) -> None:
    url = urlsplit(
        direct.generate_presigned_url(
            "put_object", Params={"Bucket": BUCKET, "Key": "plain/chunked.bin"}
        )
    )
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        # The presigned URL is signed for the server's host; the proxy must not care.
        path = f"{url.path}?{url.query}"
        conn.request("PUT", path, body=iter([b"abc", b"", b"defgh"]), encode_chunked=True)
        put = conn.getresponse()
        put.read()
        conn.request("GET", f"/{BUCKET}/{SMALL}")  # unsigned, so denied, but on the same socket
        denied = conn.getresponse()
        assert b"AccessDenied" in denied.read()
    finally:
        conn.close()
    assert put.status == 200
    assert proxy.requests[0].headers["transfer-encoding"] == "chunked"
    assert [r.conn for r in proxy.requests] == [1, 1]
    assert direct.get_object(Bucket=BUCKET, Key="plain/chunked.bin")["Body"].read() == b"abcdefgh"


def test_reset_after_nbytes(client: Any, proxy: FaultProxy) -> None:
    fault = proxy.add_fault(ResetAfter(100_000), method="GET", path_contains=BLOB)
    resp = client.get_object(Bucket=BUCKET, Key=BLOB)
    got, error = read_until_error(resp["Body"])
    assert isinstance(error, ResponseStreamingError)
    assert "reset" in str(error).lower()
    assert got == DATA[: len(got)] and len(got) <= 100_000
    assert proxy.bytes_sent() == 100_000
    assert fault.applied == 1


def test_reset_sends_rst(server: seaweed.SeaweedServer, proxy: FaultProxy) -> None:
    proxy.add_fault(ResetAfter(10))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET /{BUCKET}/{SMALL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    assert received.split(b"\r\n\r\n", 1)[1] == b"<?xml vers"  # 10 bytes of the 403 body
    assert proxy.requests[0].body_bytes == 10


def test_stall_makes_the_client_time_out(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(Stall(seconds=60, after=3 * 4096), method="GET")
    resp = client.get_object(Bucket=BUCKET, Key=BLOB)
    got, error = read_until_error(resp["Body"])
    assert isinstance(error, ReadTimeoutError)
    assert got == DATA[: 3 * 4096]
    # stop() ends the stalled connection at once (the fixture's teardown would hang otherwise).


def test_status_answers_without_the_server(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(Status(503, "SlowDown", "Please reduce your request rate."), method="GET")
    proxy.add_fault(Status(500, "InternalError"), method="HEAD")
    with pytest.raises(ClientError) as slow:
        client.get_object(Bucket=BUCKET, Key=BLOB)
    assert slow.value.response["Error"]["Code"] == "SlowDown"
    assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as internal:
        client.head_object(Bucket=BUCKET, Key=BLOB)
    assert internal.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    # Both faults are used up; the connection is still good.
    assert client.get_object(Bucket=BUCKET, Key=BLOB)["Body"].read() == DATA
    assert [r.status for r in proxy.requests] == [503, 500, 200]
    assert {r.conn for r in proxy.requests} == {1}


def test_status_on_upload_waiting_for_100_continue(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(Status(500, "InternalError"), method="PUT")
    with pytest.raises(ClientError) as error:
        client.put_object(Bucket=BUCKET, Key="plain/never.bin", Body=io.BytesIO(b"x" * 10))
    assert error.value.response["Error"]["Code"] == "InternalError"
    client.put_object(Bucket=BUCKET, Key="plain/later.bin", Body=io.BytesIO(b"y" * 10))
    assert [r.status for r in proxy.requests] == [500, 200]


def test_truncate_ends_the_body_early(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(Truncate(5000), method="GET")
    resp = client.get_object(Bucket=BUCKET, Key=BLOB)
    assert resp["ContentLength"] == len(DATA)  # the original head
    got, error = read_until_error(resp["Body"])
    assert isinstance(error, IncompleteReadError)
    assert got == DATA[:5000]


def test_wrong_content_range(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(WrongContentRange(), ranged=True)
    resp = client.get_object(Bucket=BUCKET, Key=BLOB, Range="bytes=0-99")
    assert resp["ContentRange"] == f"bytes 1-100/{len(DATA)}"
    assert resp["Body"].read() == DATA[:100]


def test_flip_byte(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(FlipByte(200_000), path_contains=BLOB)
    got = client.get_object(Bucket=BUCKET, Key=BLOB)["Body"].read()
    assert len(got) == len(DATA)
    assert [i for i in range(len(DATA)) if got[i] != DATA[i]] == [200_000]
    assert got[200_000] ^ DATA[200_000] == 1


def test_callback_runs_before_the_request_goes_upstream(
    client: Any, direct: Any, proxy: FaultProxy
) -> None:
    key = "replaced/obj.bin"
    etag = direct.put_object(Bucket=BUCKET, Key=key, Body=b"old" * 100)["ETag"]
    calls: list[int] = []

    def replace() -> None:
        calls.append(proxy.count())
        direct.put_object(Bucket=BUCKET, Key=key, Body=b"new" * 100)

    proxy.add_fault(Callback(replace), method="GET", ranged=True)
    with pytest.raises(ClientError) as error:
        client.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-9", IfMatch=etag)
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert calls == [1]
    assert proxy.requests[0].if_match == etag


def test_rewrite_body_injects_a_hostile_key(client: Any, proxy: FaultProxy) -> None:
    def hostile(body: bytes) -> bytes:
        return body.replace(f"<Key>{SMALL}</Key>".encode(), b"<Key>../../etc/passwd</Key>")

    proxy.add_fault(RewriteBody(hostile), method="GET", path_contains=BUCKET)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="models/")
    assert [o["Key"] for o in listing["Contents"]] == [BLOB, "../../etc/passwd"]
    again = client.list_objects_v2(Bucket=BUCKET, Prefix="models/")
    assert [o["Key"] for o in again["Contents"]] == [BLOB, SMALL]
    assert {r.conn for r in proxy.requests} == {1}


def test_times_and_skip(client: Any, proxy: FaultProxy) -> None:
    fault = proxy.add_fault(
        Status(503, "SlowDown"), method="GET", path_contains=SMALL, skip=1, times=2
    )
    proxy.add_fault(Status(500), method="GET", path_contains="nowhere")
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(client.get_object(Bucket=BUCKET, Key=SMALL)["Body"].read())
        except ClientError as e:
            outcomes.append(e.response["Error"]["Code"])
    assert outcomes == [b"hello", "SlowDown", "SlowDown", b"hello"]
    assert (fault.seen, fault.applied) == (3, 2)
    assert proxy.count("GET", path_contains=SMALL) == 4


def test_ranged_matcher_and_reset(client: Any, proxy: FaultProxy) -> None:
    proxy.add_fault(Status(503, "SlowDown"), ranged=True, times=None)
    assert client.get_object(Bucket=BUCKET, Key=SMALL)["Body"].read() == b"hello"
    for _ in range(2):
        with pytest.raises(ClientError):
            client.get_object(Bucket=BUCKET, Key=SMALL, Range="bytes=0-1")
    assert proxy.count(ranged=True) == 2
    proxy.reset()
    assert proxy.requests == []
    assert client.get_object(Bucket=BUCKET, Key=SMALL, Range="bytes=0-1")["Body"].read() == b"he"
    assert proxy.count() == 1


def test_only_loopback_upstreams() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 80)


def test_chunked_framing_keeps_the_wire_bytes() -> None:
    # SeaweedFS answers with Content-Length, so chunked responses are checked without it.
    wire = b"3;ext=1\r\nabc\r\n5\r\ndefgh\r\n0\r\nx-trailer: 1\r\n\r\n"

    async def split(framing: int | str | None, data: bytes) -> list[tuple[bytes, bool]]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [item async for item in _iter_body(reader, framing)]  # type: ignore[arg-type]

    pieces = asyncio.run(split(CHUNKED, wire + b"GET / HTTP/1.1\r\n"))
    assert b"".join(p for p, _ in pieces) == wire  # stops at the end of the message
    assert b"".join(p for p, payload in pieces if payload) == b"abcdefgh"
    assert asyncio.run(split(None, b"until close")) == [(b"until close", True)]
    assert asyncio.run(split(4, b"abcdef")) == [(b"abcd", True)]
