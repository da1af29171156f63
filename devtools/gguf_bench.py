"""How long the GGUF header check takes on a large file: a printed measurement (issue 16), not
a timed assertion in the tests.

Writes sparse GGUF files of `--size` (default 4 GiB; the data section is a hole, so they cost
no disk) whose headers are those of real models, then times `read_header` on each:

- mistral-like: 32k-token vocabulary (tokens, scores, types), 291 Q4_K tensors;
- llama3-like: 128k tokens plus 280k merges (~9 MB of header, 408k strings), 291 tensors.

    make bench-gguf            # or: python -m devtools.gguf_bench --size 4GiB
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fetcher.units import parse_size
from fetcher.verify.gguf import read_header

BUDGET_MS = 50.0
_Q4_K = gguf.GGMLQuantizationType.Q4_K


@dataclass(frozen=True)
class Shape:
    name: str
    tokens: int
    merges: int
    tensors: int = 291


SHAPES = (Shape("mistral-like", 32_000, 0), Shape("llama3-like", 128_256, 280_147))


def write_sparse(path: Path, shape: Shape, size: int) -> None:
    """Header as written by gguf.GGUFWriter; tensors sized so that the file is `size` bytes."""
    block, block_bytes = gguf.GGML_QUANT_SIZES[_Q4_K]
    unit = 2 * block_bytes  # 288: whole Q4_K blocks and a multiple of the 32-byte alignment
    per_tensor = max(unit, size // shape.tensors // unit * unit)
    w = gguf.GGUFWriter(path, "llama")
    w.add_token_list([f"token-{i}" for i in range(shape.tokens)])
    w.add_token_scores([0.0] * shape.tokens)
    w.add_token_types([1] * shape.tokens)
    if shape.merges:
        w.add_token_merges([f"a{i} b{i}" for i in range(shape.merges)])
    elements = per_tensor // block_bytes * block
    for i in range(shape.tensors):
        w.add_tensor_info(f"blk.{i // 9}.t{i % 9}.weight", (elements // block, block),
                          np.dtype(np.float32), per_tensor, raw_dtype=_Q4_K)  # fmt: skip
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    end = w.fout[0].tell()
    w.close()
    data = -(-end // w.data_alignment) * w.data_alignment
    os.truncate(path, data + shape.tensors * per_tensor)


def measure(path: Path, runs: int) -> list[float]:
    """Milliseconds per read_header, `runs` times (the first warms the page cache)."""
    read_header(path)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read_header(path)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4GiB", help="file size, e.g. 4GiB (default)")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        for shape in SHAPES:
            path = Path(tmp) / f"{shape.name}.gguf"
            write_sparse(path, shape, size)
            header = read_header(path)
            times = measure(path, args.runs)
            median, best = statistics.median(times), min(times)
            verdict = "within" if median < BUDGET_MS else "OVER"
            print(
                f"{shape.name}: {path.stat().st_size / 2**30:.2f} GiB file, "
                f"{header.data_offset / 2**20:.1f} MiB header, {len(header.tensors)} tensors: "
                f"header check median {median:.1f} ms, best {best:.1f} ms "
                f"({verdict} the {BUDGET_MS:.0f} ms budget)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
