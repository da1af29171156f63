"""A small stand-in for vLLM or llama-server: open every shard with the safetensors library,
or every GGUF file with llama.cpp's reader (gguf.GGUFReader), report, exit.

`make demo` runs it after `--`; it prints its PID so the demo can show that the serving
process took over the fetcher's PID (exec, not a child).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from gguf import GGUFReader
from safetensors import safe_open

_ITEMSIZE = {
    "BF16": 2,
    "F16": 2,
    "F32": 4,
    "F64": 8,
    "I8": 1,
    "U8": 1,
    "I16": 2,
    "I32": 4,
    "I64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def serve_gguf(files: list[Path], model_dir: str) -> int:
    tensors = total = 0
    for path in files:
        reader = GGUFReader(path)
        tensors += len(reader.tensors)
        total += sum(int(t.n_bytes) for t in reader.tensors)
    print(
        f"[server] pid {os.getpid()}: loaded {tensors} tensors, {total / 2**20:.1f} MiB "
        f"from {len(files)} GGUF files in {model_dir} (gguf.GGUFReader)",
        flush=True,
    )
    return 0


def main(model_dir: str) -> int:
    ggufs = sorted(Path(model_dir).glob("*.gguf"))
    if ggufs:
        return serve_gguf(ggufs, model_dir)
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    tensors = total = 0
    for shard in shards:
        with safe_open(str(shard), framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                tensor = f.get_slice(name)  # numpy has no bfloat16: read shape and dtype
                tensors += 1
                total += math.prod(tensor.get_shape()) * _ITEMSIZE[tensor.get_dtype()]
    print(
        f"[server] pid {os.getpid()}: loaded {tensors} tensors, {total / 2**20:.1f} MiB "
        f"from {len(shards)} shards in {model_dir}",
        flush=True,
    )
    return 0 if shards else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
