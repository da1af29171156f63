"""The pure functions under the byte path and the plan, tested directly (issue 17): part
planning, HTTP framing, S3 error mapping, the include/exclude rule, the plan of a fetch, and
the root cause of an ExceptionGroup. No server: each input and its answer, and each refusal.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest

from fetcher.cache.state import FileState, State
from fetcher.cache.store import Cache
from fetcher.commands.fetch import make_plan, selected, wanted
from fetcher.config import Config
from fetcher.errors import (
    AccessDenied,
    ChecksumMismatch,
    ObjectChanged,
    ObjectNotFound,
    RangeMismatch,
    SourceError,
    TransientSourceError,
)
from fetcher.source.base import RemoteObject
from fetcher.source.s3errors import map_s3_error, s3_error_from_body
from fetcher.tasks import root_cause
from fetcher.transfer.framing import RangeRequest, check_range, parse_head, request_bytes
from fetcher.transfer.parts import Part, plan_parts
from fetcher.transfer.plan import Job

# --- plan_parts ------------------------------------------------------------------------------


def test_parts_tile_the_object_exactly() -> None:
    parts = plan_parts(10, 4)
    assert parts == [Part(0, 0, 3), Part(1, 4, 7), Part(2, 8, 9)]
    assert plan_parts(8, 4) == [Part(0, 0, 3), Part(1, 4, 7)]  # no empty trailing part
    assert plan_parts(3, 4) == [Part(0, 0, 2)]


def test_zero_byte_object_is_one_empty_part() -> None:
    assert plan_parts(0, 4) == [Part(0, 0, -1)]


@pytest.mark.parametrize(("size", "part"), [(1, 1), (1000, 7), (2**33 + 5, 2**25)])
def test_parts_cover_every_byte_once(size: int, part: int) -> None:
    parts = plan_parts(size, part)
    assert parts[0].start == 0 and parts[-1].end == size - 1
    assert all(a.end + 1 == b.start for a, b in itertools.pairwise(parts))
    assert [p.index for p in parts] == list(range(len(parts)))


# --- HTTP framing ----------------------------------------------------------------------------

REQ = RangeRequest("http://h:9000/b/k?X-Amz-Signature=s", "k", '"e"', 100, 199, 1000)


def test_request_carries_range_and_if_match() -> None:
    text = request_bytes(REQ).decode()
    assert text.startswith("GET /b/k?X-Amz-Signature=s HTTP/1.1\r\nHost: h:9000\r\n")
    assert 'If-Match: "e"\r\n' in text and "Range: bytes=100-199\r\n" in text
    assert text.endswith("\r\n\r\n")
    empty = RangeRequest("http://h/b/k", "k", '"e"', 0, -1, 0)
    assert "Range:" not in request_bytes(empty).decode()  # a zero-byte object: no Range


def test_parse_head_lowercases_names() -> None:
    status, headers = parse_head(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1-2/3")
    assert status == 206 and headers == {"content-range": "bytes 1-2/3"}


def test_malformed_status_line_is_transient() -> None:
    with pytest.raises(TransientSourceError):
        parse_head(b"garbage")


def _headers(length: int, content_range: str | None) -> dict[str, str]:
    h = {"content-length": str(length)}
    if content_range is not None:
        h["content-range"] = content_range
    return h


def test_range_exactly_as_asked_passes() -> None:
    check_range(REQ, 206, _headers(100, "bytes 100-199/1000"))


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (206, _headers(100, "bytes 100-199/999")),  # another object size
        (206, _headers(100, "bytes 0-99/1000")),  # other bytes
        (206, _headers(99, "bytes 100-199/1000")),  # short
        (206, {"content-range": "bytes 100-199/1000"}),  # no length
        (206, _headers(100, None)),  # no Content-Range
    ],
)
def test_any_other_range_is_refused(status: int, headers: dict[str, str]) -> None:
    with pytest.raises(RangeMismatch):
        check_range(REQ, status, headers)


def test_200_for_the_whole_object_is_accepted_only_when_the_whole_was_asked() -> None:
    whole = RangeRequest("http://h/b/k", "k", '"e"', 0, 999, 1000)
    check_range(whole, 200, _headers(1000, None))
    with pytest.raises(RangeMismatch):
        check_range(REQ, 200, _headers(1000, None))


# --- S3 errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (403, "AccessDenied", AccessDenied),
        (403, "SignatureDoesNotMatch", AccessDenied),
        (404, "NoSuchKey", ObjectNotFound),
        (404, "NoSuchBucket", ObjectNotFound),
        (412, "PreconditionFailed", ObjectChanged),
        (503, "SlowDown", TransientSourceError),
        (500, "InternalError", TransientSourceError),
        (400, "InvalidArgument", SourceError),
    ],
)
def test_s3_error_codes_map_to_their_branch(status: int, code: str, kind: type) -> None:
    exc = map_s3_error(status, code, "msg", "GET k")
    assert type(exc) is kind
    assert "GET k" in str(exc)


def test_error_body_is_read_for_its_code() -> None:
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
    exc = s3_error_from_body(503, body, "GET k")
    assert isinstance(exc, TransientSourceError) and exc.reason == "SlowDown"
    assert isinstance(s3_error_from_body(404, b"", "GET k"), ObjectNotFound)


# --- include / exclude and the plan -----------------------------------------------------------


def test_globs_match_the_path_or_the_file_name() -> None:
    assert wanted("a/config.json", ("*.json",), ())
    assert wanted("a/config.json", ("a/*",), ())
    assert not wanted("a/model.bin", ("*.json",), ())
    assert not wanted("a/model.bin", (), ("*.bin",))
    assert not wanted(".model-manifest.json", (), ())  # the manifest is never a model file


def _obj(rel: str, size: int = 4, etag: str = '"e"') -> RemoteObject:
    return RemoteObject("p/" + rel, rel, size, etag)


def test_selected_keeps_the_listing_order() -> None:
    objs = [_obj("b.json"), _obj("a.bin"), _obj("c.json")]
    assert [o.rel for o in selected(objs, ("*.json",), ())] == ["b.json", "c.json"]


def test_plan_keeps_present_files_fetches_changed_ones_and_removes_gone_ones(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "cache"
    dest.mkdir()
    for rel in ("kept.bin", "changed.bin", "gone.bin"):
        (dest / rel).write_bytes(b"data")
    mtime = {rel: os.stat(dest / rel).st_mtime_ns for rel in ("kept.bin", "changed.bin")}
    state = State(
        files={
            "kept.bin": FileState(4, '"e"', "x", mtime["kept.bin"]),
            "changed.bin": FileState(4, '"old"', "x", mtime["changed.bin"]),
            "gone.bin": FileState(4, '"e"', "x", 0),
        }
    )
    jobs = [Job(_obj("kept.bin")), Job(_obj("changed.bin")), Job(_obj("new.bin"))]
    cfg = Config(dest=dest, bucket="b")
    plan = asyncio.run(make_plan(jobs, state, Cache(dest), cfg))
    assert [o.rel for o in plan.keep] == ["kept.bin"]
    assert [j.obj.rel for j in plan.fetch] == ["changed.bin", "new.bin"]
    assert plan.remove == ["gone.bin"]


# --- root_cause ------------------------------------------------------------------------------


def test_root_cause_is_our_first_error_in_a_nested_group() -> None:
    ours = ChecksumMismatch("k", "a", "b")
    group = BaseExceptionGroup("g", [ValueError("x"), BaseExceptionGroup("h", [ours])])
    assert root_cause(group) is ours


def test_root_cause_without_ours_is_the_first_leaf() -> None:
    first = ValueError("x")
    assert root_cause(BaseExceptionGroup("g", [first, KeyError("y")])) is first
