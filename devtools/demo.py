"""`make demo`: the whole flow on one machine, with nothing but what `make install` set up.

1. start SeaweedFS on 127.0.0.1 (free ports, a temporary directory);
2. generate a sample model (config, tokenizer, three valid safetensors shards, index), or
   with `--format gguf` (`make demo DEMO_FORMAT=gguf`) a llama.cpp model: a GGUF split set
   written by the `gguf` package;
3. `model-fetcher publish` it to s3://llm-models/demo-model/v1/ with its checksum manifest;
4. fetch it into ./demo/model-cache with the pod environment and hand off to a stand-in
   server that loads every shard (safetensors, or gguf.GGUFReader) and prints its PID (the
   fetcher's PID: exec, not a child);
5. fetch again to show the warm start: one LIST, no GET, well under a second;
6. `verify --full`, then stop the server (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.sample_gguf import write_gguf
from devtools.sample_model import write_sample_model
from devtools.seaweed import SeaweedServer, boto3_client, start_temporary

BUCKET, PREFIX = "llm-models", "demo-model/v1/"
CACHE = Path("demo/model-cache").resolve()
FETCHER = [sys.executable, "-m", "fetcher"]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def pod_env(server: SeaweedServer, metrics: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_"))}
    return {
        **keep,
        "MINIO_ENDPOINT": server.endpoint,
        "MINIO_BUCKET": BUCKET,
        "MODEL_PREFIX": PREFIX,
        "MODEL_CACHE_DIR": str(CACHE),
        "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key,
        "LOG_FORMAT": "text",
        "FETCH_PROGRESS": "0",
        "METRICS_TEXTFILE": str(metrics),
    }


def run(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env)
    print(f"[demo] started model-fetcher as pid {proc.pid}", flush=True)
    code = proc.wait()
    return code, time.monotonic() - started


def downloaded(metrics: Path) -> float:
    for line in metrics.read_text().splitlines():
        if line.startswith("model_fetcher_bytes_downloaded_total{"):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def write_model(model: Path, fmt: str) -> None:
    if fmt == "gguf":
        say("generating a ~64 MB GGUF model (a split set of 2; F32, F16, Q8_0, Q4_K tensors)")
        for path in write_gguf(model / "demo-llama.gguf", rows=32768, split_max_tensors=3):
            print(f"[demo] wrote {path.name} ({path.stat().st_size / 2**20:.1f} MiB)")
    else:
        say("generating a ~300 MB sample model (3 safetensors shards + index)")
        write_sample_model(model, 300 * 10**6, shards=3)


def demo(server: SeaweedServer, work: Path, fmt: str) -> None:
    boto3_client(server).create_bucket(Bucket=BUCKET)
    write_model(work / "model", fmt)
    env = pod_env(server, work / "metrics.prom")
    say(f"model-fetcher publish -> s3://{BUCKET}/{PREFIX}")
    check(
        subprocess.call(
            [*FETCHER, "publish", str(work / "model"), f"s3://{BUCKET}/{PREFIX}"], env=env
        )
    )
    shutil.rmtree(CACHE, ignore_errors=True)
    serve = [sys.executable, "-m", "devtools.serve_standin", str(CACHE)]
    say(f"cold start: fetch into {CACHE}, then exec the serving stand-in")
    code, took = run([*FETCHER, "--", *serve], env)
    check(code)
    print(
        f"[demo] cold start took {took:.2f}s, {downloaded(work / 'metrics.prom'):.0f} bytes "
        "downloaded; the server above reports the same pid as model-fetcher (exec)"
    )
    say("warm start: same command again")
    code, took = run([*FETCHER, "--", *serve], env)
    check(code)
    print(
        f"[demo] warm start took {took:.2f}s for the whole process, "
        f"{downloaded(work / 'metrics.prom'):.0f} bytes downloaded (one LIST, no GET)"
    )
    say("model-fetcher verify --full (no network)")
    check(
        subprocess.call(
            [*FETCHER, "verify", str(CACHE), "--full"], env=env, stdout=subprocess.DEVNULL
        )
    )
    status = json.loads(subprocess.check_output([*FETCHER, "status", str(CACHE)], env=env))
    print(
        f"[demo] cache complete={status['complete']}: {status['file_count']} files, "
        f"{status['total_bytes'] / 2**20:.1f} MiB"
    )


def check(code: int) -> None:
    if code != 0:
        raise SystemExit(f"[demo] a step failed with exit code {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description="the whole flow on one machine")
    parser.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors")
    fmt = parser.parse_args().format
    work = Path(tempfile.mkdtemp(prefix="fetcher-demo-"))
    say("starting SeaweedFS (weed mini) on 127.0.0.1")
    server = start_temporary()
    print(f"[demo] S3 endpoint {server.endpoint} (pid {server.proc.pid if server.proc else '?'})")
    try:
        demo(server, work, fmt)
        say("demo finished")
    except KeyboardInterrupt:
        print("\n[demo] interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        print("[demo] SeaweedFS stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
