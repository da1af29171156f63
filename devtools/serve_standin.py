"""A small stand-in for vLLM: open every shard with the safetensors library, report, exit.

`make demo` runs it after `--`; it prints its PID so the demo can show that the serving
process took over the fetcher's PID (exec, not a child).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

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


def main(model_dir: str) -> int:
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
