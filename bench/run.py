"""`make bench`: model-fetcher against s5cmd, rclone, boto3 and a KServe-style loop.

    python -m bench.run [--size 4GiB] [--shards 4] [--rounds 3] [--tools a,b] [--out DIR]
                        [--fetcher-env 'K=V ...']... [--page-cache warm|drop] [--quick]

Starts SeaweedFS on 127.0.0.1, uploads a generated safetensors model with boto3, then runs every
tool once per round (alternating, the order rotated each round) into a fresh directory, hash-checks
what it wrote, and reports medians over the rounds after the first (the warm-up). See
bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import dataset, report
from bench.chart import write_chart
from bench.machine import machine_info
from bench.runner import Plan, Run, drop_caches_possible, run_once
from bench.tools import (
    TOOL_NAMES,
    Source,
    Tool,
    byte_compile,
    publish,
    select,
    signed_variant,
    versions,
)
from devtools.seaweed import SeaweedServer, boto3_client
from fetcher import units

RESULTS = Path(__file__).resolve().parent / "results"
_NOISE_PAUSE_S = 2.0
_NOISE_MIN_WALL_S = 1.0
_QUICK = {"size": 128 * 2**20, "shards": 2, "rounds": 2}
_DEFAULTS = {"size": 4 * 2**30, "shards": 4, "rounds": 3}
PAGE_CACHE_NOTES = {
    "warm": "the server's copy of the model stays in the page cache for every tool (the warm-up"
    " round loads it); each run writes into a fresh directory, then sync (timed, see 'durable'),"
    " hash check, delete, sync before the next run",
    "drop": "all caches dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every run, so"
    " the server reads the model from disk for every tool",
}


def parse_size(text: str) -> int:
    """`4GiB`, `512MiB`, `64M` or a byte count: the fetcher's own rule (fetcher/units.py)."""
    try:
        return units.parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (try 4GiB, 512MiB, 1000000)"
        ) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, help="total model size (default 4GiB)")
    p.add_argument("--shards", type=int, help="safetensors shards (default 4)")
    p.add_argument("--rounds", type=int, help="rounds, the first is warm-up (default 3)")
    p.add_argument("--tools", default=",".join(TOOL_NAMES), help="comma-separated subset")
    p.add_argument(
        "--fetcher-env",
        action="append",
        default=[],
        metavar="'K=V ...'",
        help="one more model-fetcher row with this environment (repeatable)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.json/.png")
    p.add_argument(
        "--manifest",
        action="store_true",
        help="upload with `model-fetcher publish` (adds .model-manifest.json) instead of boto3",
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="publish signed (implies --manifest) and add a model-fetcher row that verifies"
        " the signature (FETCH_SIGNER_KEY): the cost of sha256 per part (issue 12)",
    )
    p.add_argument("--page-cache", choices=sorted(PAGE_CACHE_NOTES), default="warm")
    p.add_argument(
        "--noise-limit",
        type=float,
        default=0.10,
        help="share of the machine's CPU other processes may use during a run (default 0.10)",
    )
    p.add_argument(
        "--noise-retries", type=int, default=2, help="repeats of a disturbed run (default 2)"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--workdir", type=Path, help="where the temporary directory goes")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and server data")
    p.add_argument("--quick", action="store_true", help="2 x 64 MiB, 2 rounds: a smoke test")
    return p


@dataclass(frozen=True)
class Options:
    size: int
    shards: int
    rounds: int
    tools: list[Tool]
    out: Path
    page_cache: str
    timeout_s: float
    workdir: Path | None
    keep_workdir: bool
    noise_limit: float
    noise_retries: int
    manifest: bool
    signed: bool = False


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    defaults = _QUICK if args.quick else _DEFAULTS
    size, shards, rounds = (getattr(args, k) or defaults[k] for k in ("size", "shards", "rounds"))
    if rounds < 2:
        parser.error("--rounds must be at least 2: the first round is a warm-up")
    if args.page_cache == "drop" and not drop_caches_possible():
        parser.error("--page-cache drop needs write access to /proc/sys/vm/drop_caches (root)")
    try:
        tools = select([t.strip() for t in args.tools.split(",") if t.strip()], args.fetcher_env)
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        size,
        shards,
        rounds,
        tools,
        args.out,
        args.page_cache,
        args.timeout,
        args.workdir,
        args.keep_workdir,
        args.noise_limit,
        args.noise_retries,
        args.manifest or args.signed,
        args.signed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=opts.workdir))
    try:
        with SeaweedServer(workdir=workdir / "server") as server:
            return _bench(opts, server, workdir)
    finally:
        if opts.keep_workdir:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _bench(opts: Options, server: SeaweedServer, workdir: Path) -> int:
    # Earlier checkouts run as variants with PYTHONPATH (README): compiled as this one is.
    byte_compile(
        *(Path(t.extra_env["PYTHONPATH"]) for t in opts.tools if "PYTHONPATH" in t.extra_env)
    )
    context = _context(opts, workdir)
    _print_context(context)
    model, tiny = _upload(server, workdir, opts)
    pid = server.proc.pid if server.proc else None
    drop = opts.page_cache == "drop"
    plan = Plan("startup", _source(server, tiny), tiny, workdir, opts.timeout_s, drop, pid)
    startup_runs = _phase(plan, opts)
    startup = report.summarize(startup_runs)
    plan = Plan("model", _source(server, model), model, workdir, opts.timeout_s, drop, pid)
    runs = _phase(plan, opts)
    rows = report.summarize(runs, {s.tool: s for s in startup})
    runs = startup_runs + runs
    _print_results(opts, model, startup, rows, runs)
    _write(opts, context, model, startup, rows, runs)
    return 0 if all(r.status == "ok" for r in [*rows, *startup]) else 1


def _context(opts: Options, workdir: Path) -> dict[str, object]:
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg(),
        "machine": machine_info(workdir),
        "versions": versions(),
        "settings": {
            "size_bytes": opts.size,
            "shards": opts.shards,
            "rounds": opts.rounds,
            "warmup_rounds": 1,
            "tools": [t.name for t in opts.tools],
            "page_cache": opts.page_cache,
            "page_cache_note": PAGE_CACHE_NOTES[opts.page_cache],
            "noise_limit": opts.noise_limit,
            "noise_retries": opts.noise_retries,
            "uploaded_with": "model-fetcher publish" if opts.manifest else "boto3",
        },
    }


def _print_context(context: dict[str, object]) -> None:
    for section in ("machine", "versions", "settings"):
        values = context[section]
        assert isinstance(values, dict)
        print(f"{section}: " + "; ".join(f"{k}={v}" for k, v in values.items()))
    sys.stdout.flush()


def _upload(
    server: SeaweedServer, workdir: Path, opts: Options
) -> tuple[dataset.Uploaded, dataset.Uploaded]:
    start = time.perf_counter()
    client = boto3_client(server)
    dataset.ensure_bucket(client)
    model_dir = dataset.make_model(workdir, opts.size, opts.shards)
    key = None
    if opts.signed:
        key, public = dataset.make_signing_key(workdir)
        at = next(i for i, t in enumerate(opts.tools) if t.name == "model-fetcher") + 1
        opts.tools.insert(at, signed_variant(public))  # the same objects, verified
    publisher = _publisher(server, key) if opts.manifest else None
    model = dataset.upload(client, model_dir, dataset.MODEL_PREFIX, publisher)
    tiny = dataset.upload(client, dataset.make_tiny(workdir), dataset.TINY_PREFIX, publisher)
    took = time.perf_counter() - start
    print(
        f"model: {len(model.digests)} files, {model.total_bytes / 2**20:.0f} MiB at"
        f" {server.endpoint}/{dataset.BUCKET}/{model.prefix} (generated and uploaded in"
        f" {took:.0f}s, not measured)",
        flush=True,
    )
    return model, tiny


def _source(server: SeaweedServer, model: dataset.Uploaded) -> Source:
    return _source_at(server, model.prefix)


def _source_at(server: SeaweedServer, prefix: str) -> Source:
    return Source(server.endpoint, dataset.BUCKET, prefix, server.access_key, server.secret_key)


def _publisher(server: SeaweedServer, key: Path | None) -> dataset.Publisher:
    return lambda local, prefix: publish(_source_at(server, prefix), local, key)


def _phase(plan: Plan, opts: Options) -> list[Run]:
    runs: list[Run] = []
    failed: set[str] = set()
    for round_no in range(opts.rounds):
        shift = round_no % len(opts.tools)
        for tool in opts.tools[shift:] + opts.tools[:shift]:
            if tool.name in failed:
                continue
            runs += _attempts(plan, opts, tool, round_no)
            if not runs[-1].ok:
                failed.add(tool.name)
    return runs


def _attempts(plan: Plan, opts: Options, tool: Tool, round_no: int) -> list[Run]:
    """Run once, and again (up to --noise-retries) while other processes disturb it.

    If every attempt was disturbed, the least disturbed one is kept: the choice depends on the
    noise, never on the tool's own figures.
    """
    warmup, done = round_no == 0, []
    for attempt in range(opts.noise_retries + 1):
        run = run_once(plan, tool, round_no, warmup, attempt)
        done.append(run)
        if warmup or not run.ok or not _disturbed(run, opts.noise_limit):
            break
        again = attempt < opts.noise_retries
        print(f"  {_describe(run)}  disturbed{', run again' if again else ''}", flush=True)
        if again:
            time.sleep(_NOISE_PAUSE_S)
    kept = done[-1] if not done[-1].ok else min(done, key=lambda r: r.other_cpu_share)
    done = [r if r is kept else replace(r, discarded=True) for r in done]
    print(f"  {_describe(kept)}  {_status(kept)}", flush=True)
    return done


def _disturbed(run: Run, limit: float) -> bool:
    # CPU time is counted in 10 ms ticks: a shorter run's share of noise is not measurable.
    return run.wall_s >= _NOISE_MIN_WALL_S and run.other_cpu_share > limit


def _describe(run: Run) -> str:
    label = "warm-up" if run.warmup else f"round {run.round}"
    speed = f"{run.bytes / 2**20 / run.wall_s:8.0f} MiB/s" if run.phase == "model" else ""
    return (
        f"[{run.phase} {label}] {run.tool:<24} {run.wall_s:7.2f}s {speed}  cpu {run.cpu_s:6.2f}s"
        f"  rss {run.peak_rss_mib:5.0f} MiB  others {_others(run)}"
    )


def _others(run: Run) -> str:
    return f"{run.other_cpu_share:4.0%}" if run.wall_s >= _NOISE_MIN_WALL_S else "   -"


def _status(run: Run) -> str:
    if not run.ok:
        return f"FAILED: {run.error}"
    return "ok" if run.attempt == 0 else f"ok (attempt {run.attempt + 1} kept)"


def _print_results(
    opts: Options,
    model: dataset.Uploaded,
    startup: list[report.Summary],
    rows: list[report.Summary],
    runs: list[Run],
) -> None:
    print(
        f"\n{model.total_bytes / 2**30:.2f} GiB in {opts.shards} shards;"
        f" medians of {opts.rounds - 1} rounds after 1 warm-up"
    )
    print(f"page cache: {PAGE_CACHE_NOTES[opts.page_cache]}\n")
    print(report.model_table(rows))
    print("\n" + report.startup_table(startup))
    for line in report.comparisons(rows, runs):
        print(line)
    if noise := report.noise_warning(rows, opts.noise_limit, _NOISE_MIN_WALL_S):
        print(noise)
    if problems := report.failures([*rows, *startup]):
        print("\n" + problems)


def _write(
    opts: Options,
    context: dict[str, object],
    model: dataset.Uploaded,
    startup: list[report.Summary],
    rows: list[report.Summary],
    runs: list[Run],
) -> None:
    opts.out.mkdir(parents=True, exist_ok=True)
    document = {
        **context,
        "model": {
            "prefix": model.prefix,
            "total_bytes": model.total_bytes,
            "xxh3_128": model.digests,
            "optional_xxh3_128": model.optional,
        },
        "results": rows,
        "startup": startup,
        "comparisons": report.comparisons(rows, runs),
        "runs": runs,
    }
    report.write_json(opts.out / "latest.json", document)
    title = (
        f"{model.total_bytes / 2**30:.2f} GiB / {opts.shards} shards, medians of"
        f" {opts.rounds - 1} rounds, SeaweedFS on loopback"
    )
    write_chart(opts.out / "latest.png", rows, title)
    print(f"\nwrote {opts.out / 'latest.json'} and {opts.out / 'latest.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
