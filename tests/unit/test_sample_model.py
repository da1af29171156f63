"""devtools.sample_model: a valid HF-style model, checked by the safetensors library itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
from safetensors import safe_open

from devtools.sample_model import main, parse_size, write_sample_model
from fetcher.verify.checks import check_model

SIZE = 3_000_000


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    dest = tmp_path_factory.mktemp("model")
    return dest, write_sample_model(dest, SIZE, shards=3, seed=7)


def shards_of(files: list[Path]) -> list[Path]:
    return [p for p in files if p.name.endswith(".safetensors")]


def test_writes_the_files_of_a_sharded_hf_model(model: tuple[Path, list[Path]]) -> None:
    dest, files = model
    assert [p.name for p in files] == [
        "config.json",
        "tokenizer.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in files)
    config = json.loads((dest / "config.json").read_text())
    assert config["model_type"] == "mistral"
    assert json.loads((dest / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    check_model(dest, [p.name for p in files])


def test_the_safetensors_library_reads_every_shard(model: tuple[Path, list[Path]]) -> None:
    dest, files = model
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    total = 0
    dtypes: set[str] = set()
    for shard in shards_of(files):
        # deserialize validates the whole layout in Rust, including every data offset.
        tensors = dict(safetensors.deserialize(shard.read_bytes()))
        with safe_open(shard, "np") as f:
            assert f.metadata() == {"format": "pt"}
        assert {n for n, s in index["weight_map"].items() if s == shard.name} == set(tensors)
        assert any(".self_attn.q_proj.weight" in n for n in tensors)
        total += sum(len(t["data"]) for t in tensors.values())
        dtypes |= {t["dtype"].upper() for t in tensors.values()}
    assert index["metadata"]["total_size"] == total
    assert dtypes == {"BF16", "F16", "F32"}
    assert abs(total - SIZE) < SIZE * 0.01


def test_headers_are_padded_to_eight_bytes(model: tuple[Path, list[Path]]) -> None:
    for shard in shards_of(model[1]):
        with open(shard, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            assert n % 8 == 0
            assert f.read(n).decode().endswith(("}", " "))


def test_no_two_parts_of_the_data_are_alike(model: tuple[Path, list[Path]]) -> None:
    # Fetch tests detect a part written at the wrong offset only if parts differ.
    chunk = 4096
    seen: set[bytes] = set()
    count = 0
    for shard in shards_of(model[1]):
        data = shard.read_bytes()
        for i in range(4096, len(data) - chunk, chunk):
            seen.add(data[i : i + chunk])
            count += 1
    assert count > 500
    assert len(seen) == count


def test_the_seed_decides_the_bytes(tmp_path: Path) -> None:
    a = write_sample_model(tmp_path / "a", 100_000, seed=1)
    b = write_sample_model(tmp_path / "b", 100_000, seed=1)
    c = write_sample_model(tmp_path / "c", 100_000, seed=2)
    for pa, pb, pc in zip(shards_of(a), shards_of(b), shards_of(c), strict=True):
        assert pa.read_bytes() == pb.read_bytes() != pc.read_bytes()


@pytest.mark.parametrize("shards", [1, 2, 5])
@pytest.mark.parametrize("size", [0, 10_000, 1_000_000])
def test_any_size_and_shard_count_is_valid(tmp_path: Path, shards: int, size: int) -> None:
    files = write_sample_model(tmp_path, size, shards=shards)
    assert len(shards_of(files)) == shards
    check_model(tmp_path, [p.name for p in files])
    total = json.loads(files[-1].read_text())["metadata"]["total_size"]
    assert total >= size
    if size >= 1_000_000:
        assert total < size * 1.01


def test_refuses_zero_shards(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_sample_model(tmp_path, 1000, shards=0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("300MB", 300_000_000),
        ("300M", 300_000_000),
        ("1.5G", 1_500_000_000),
        ("64MiB", 64 << 20),
        ("2gib", 2 << 30),
        ("10KB", 10_000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "1.2.3M", "5I", "-3MB", "12XB"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "m"), "--size", "2MB", "--shards", "2", "--seed", "3"]) == 0
    assert "wrote 5 files" in capsys.readouterr().out
    assert len(list((tmp_path / "m").glob("*.safetensors"))) == 2
