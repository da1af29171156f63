"""Write a realistic, sharded Hugging Face style model of any size, for tests, the demo and bench.

The shards are written by hand in the safetensors format (8-byte little-endian header length,
a JSON header padded with spaces to a multiple of 8, then the tensor data), so the fetcher's
checks are tested against the format itself, not against one library's reading of it.

Tensor data is pseudo-random from `random.Random(seed)`: deterministic for a seed, never
repetitive, so a part spliced from the wrong range of a file can't hash the same. It is
generated and written in 1 MiB pieces, so memory stays flat whatever the model size.

    python -m devtools.sample_model DEST --size 300MB --shards 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fetcher.units import parse_size

_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
_PIECE = 1 << 20  # randbytes is fastest on pieces that stay in cache


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    vocab: int
    layers: int


def _layer(i: int, d: Dims) -> list[Tensor]:
    h, kv, mlp, p = d.hidden, d.hidden // 4, d.intermediate, f"model.layers.{i}"
    # Mixed dtypes on purpose: each shard then holds 2- and 4-byte tensors of three kinds.
    return [
        Tensor(f"{p}.input_layernorm.weight", "F32", (h,)),
        Tensor(f"{p}.self_attn.q_proj.weight", "BF16", (h, h)),
        Tensor(f"{p}.self_attn.k_proj.weight", "BF16", (kv, h)),
        Tensor(f"{p}.self_attn.v_proj.weight", "BF16", (kv, h)),
        Tensor(f"{p}.self_attn.o_proj.weight", "BF16", (h, h)),
        Tensor(f"{p}.post_attention_layernorm.weight", "F32", (h,)),
        Tensor(f"{p}.mlp.gate_proj.weight", "F16", (mlp, h)),
        Tensor(f"{p}.mlp.up_proj.weight", "F16", (mlp, h)),
        Tensor(f"{p}.mlp.down_proj.weight", "F16", (h, mlp)),
    ]


def plan_shards(d: Dims, shards: int) -> list[list[Tensor]]:
    """Tensors of each shard, in file order: layers spread evenly, embeddings at the ends."""
    out: list[list[Tensor]] = [[] for _ in range(shards)]
    out[0].append(Tensor("model.embed_tokens.weight", "BF16", (d.vocab, d.hidden)))
    for i in range(d.layers):
        out[i * shards // d.layers].extend(_layer(i, d))
    out[-1].append(Tensor("model.norm.weight", "F32", (d.hidden,)))
    out[-1].append(Tensor("lm_head.weight", "BF16", (d.vocab, d.hidden)))
    return out


def choose_dims(total_bytes: int, shards: int) -> Dims:
    """Mistral proportions (kv = h/4, mlp = 3.5h) scaled so the tensors hold ~total_bytes."""
    layers = 2 * shards
    # Per layer 26h² bytes of 2-byte weights; embed + lm_head with vocab 8h add 32h².
    h = max(8, math.isqrt(total_bytes // (26 * layers + 32)) // 8 * 8)
    d = Dims(hidden=h, intermediate=h * 7 // 2, vocab=8 * h, layers=layers)
    # Extra vocabulary rows (4h bytes each, embed + lm_head) take up the rounding slack, so
    # the tensors hold at least total_bytes and less than 4h bytes more.
    slack = total_bytes - sum(t.nbytes for s in plan_shards(d, shards) for t in s)
    return Dims(h, d.intermediate, d.vocab + max(0, -(-slack // (4 * h))), layers)


def _header(tensors: list[Tensor]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [pos, pos + t.nbytes],
        }
        pos += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keeps the data section 8-byte aligned, as the format asks
    return len(raw).to_bytes(8, "little") + raw


def _write_random(f: BinaryIO, n: int, rng: random.Random) -> None:
    while n > 0:
        piece = min(n, _PIECE)
        f.write(rng.randbytes(piece))
        n -= piece


def _write_shard(path: Path, tensors: list[Tensor], rng: random.Random) -> None:
    with open(path, "wb") as f:
        f.write(_header(tensors))
        for t in tensors:
            _write_random(f, t.nbytes, rng)


def _config(d: Dims) -> dict[str, Any]:
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": d.hidden // 8,
        "vocab_size": d.vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _tokenizer() -> dict[str, Any]:
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + [chr(c) for c in range(ord("a"), 123)])}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tok,
                "special": True,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            }
            for i, tok in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"},
        "post_processor": None,
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"},
        "model": {"type": "BPE", "unk_token": "<unk>", "vocab": vocab, "merges": []},
    }


def _write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_sample_model(dest: Path, total_bytes: int, shards: int = 3, seed: int = 0) -> list[Path]:
    """Write config, tokenizer, `shards` safetensors shards holding ~total_bytes and the index.

    The tensors hold at least total_bytes and a little more (under 4 x hidden size); tiny sizes
    get the smallest model the layout allows, a few KiB per shard.
    Returns the written files, the index last.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    dest.mkdir(parents=True, exist_ok=True)
    dims = choose_dims(total_bytes, shards)
    rng = random.Random(seed)
    written = [_write_json(dest / "config.json", _config(dims))]
    written.append(_write_json(dest / "tokenizer.json", _tokenizer()))
    plan = plan_shards(dims, shards)
    weight_map: dict[str, str] = {}
    for i, tensors in enumerate(plan, start=1):
        path = dest / f"model-{i:05d}-of-{shards:05d}.safetensors"
        _write_shard(path, tensors, rng)
        weight_map.update((t.name, path.name) for t in tensors)
        written.append(path)
    total = sum(t.nbytes for s in plan for t in s)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    written.append(_write_json(dest / "model.safetensors.index.json", index))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.sample_model", description=__doc__)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", type=parse_size, default="300MB", help="tensor bytes in total")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = write_sample_model(args.dest, args.size, args.shards, args.seed)
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files, {size:,} bytes, to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
