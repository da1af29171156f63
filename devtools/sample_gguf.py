"""Write small, valid GGUF models with llama.cpp's own writer (the `gguf` package, a dev
dependency), for the tests of issue 16 and `make demo DEMO_FORMAT=gguf`.

Tensors come in the types the fetcher's reader is checked on: F32 and F16 from random floats,
Q8_0 quantized by gguf itself, Q4_K as random blocks (gguf cannot quantize to Q4_K; its blocks
are bytes to a reader that does not dequantize). `split_max_tensors` writes a split set
`<stem>-00001-of-0000N.gguf` ... with `split.*` key-values, as llama.cpp's gguf-split does.

    python -m devtools.sample_gguf DEST.gguf --rows 1024 --splits 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

TYPES = ("F32", "F16", "Q8_0", "Q4_K")
_Q = gguf.GGMLQuantizationType


def _tensor(kind: str, rows: int, cols: int, rng: np.random.Generator) -> tuple[Any, Any]:
    """(array, raw_dtype) for GGUFWriter.add_tensor."""
    floats = rng.standard_normal((rows, cols), dtype=np.float32)
    if kind == "F32":
        return floats, None
    if kind == "F16":
        return floats.astype(np.float16), None
    if kind == "Q8_0":
        return gguf.quants.quantize(floats, _Q.Q8_0), _Q.Q8_0
    if kind == "Q4_K":
        block, size = gguf.GGML_QUANT_SIZES[_Q.Q4_K]
        return rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8), _Q.Q4_K
    raise ValueError(f"no sample for tensor type {kind}")


def write_gguf(
    path: Path,
    *,
    rows: int = 8,
    cols: int = 256,
    types: Sequence[str] = TYPES,
    seed: int = 0,
    split_max_tensors: int = 0,
    alignment: int | None = None,
    vocab: int = 64,
) -> list[Path]:
    """Write the model (one file, or a split set) and return the paths written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    w.add_name(path.stem)
    w.add_block_count(len(types))
    w.add_context_length(2048)
    w.add_embedding_length(cols)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("sample.is_test_model", True)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<tok{i}>" for i in range(vocab)])
    w.add_token_scores([float(-i) for i in range(vocab)])
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for i, kind in enumerate(types):
        array, raw = _tensor(kind, rows, cols, rng)
        w.add_tensor(f"blk.{i}.ffn_{kind.lower()}.weight", array, raw_dtype=raw)
    w.add_tensor("output_norm.weight", rng.standard_normal(cols, dtype=np.float32))
    written = w.format_shard_names(path)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--splits", type=int, default=1, help="files in the split set")
    args = parser.parse_args(argv)
    per_split = -(-(len(TYPES) + 1) // args.splits) if args.splits > 1 else 0
    for p in write_gguf(args.dest, rows=args.rows, split_max_tensors=per_split):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
