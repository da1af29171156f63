"""The per-format checks of issue 16 as check_model and check_file run them: JSON files,
`*.index.json` weight maps, GGUF dispatch, and FETCH_SKIP_FORMAT_CHECKS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from devtools.sample_gguf import write_gguf
from devtools.sample_model import write_sample_model
from fetcher.config import load
from fetcher.errors import ConfigError, InvalidModel
from fetcher.verify import formats
from fetcher.verify.checks import check_file, check_model
from fetcher.verify.formats import FAMILIES, family, parse_families

HTML = "<!DOCTYPE html><html><body>Access denied</body></html>"


def rels(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def hf_model(tmp_path: Path) -> Path:
    root = tmp_path / "hf"
    write_sample_model(root, 1 << 20, shards=2, seed=1)
    return root


@pytest.mark.parametrize(
    ("rel", "kind"),
    [
        ("model-00001-of-00002.safetensors", "safetensors"),
        ("q4/llama-3-8b.Q4_K_M.gguf", "gguf"),
        ("pytorch_model.bin.index.json", "index"),
        ("model.safetensors.index.json", "index"),
        ("unet/config.json", "json"),
        ("tokenizer.json", "json"),
        ("model_index.json", None),
        ("README.md", None),
        ("pytorch_model-00001-of-00002.bin", None),
    ],
)
def test_family_by_name(rel: str, kind: str | None) -> None:
    assert family(rel) == kind


@pytest.mark.parametrize(
    "name",
    ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
     "preprocessor_config.json"],
)  # fmt: skip
@pytest.mark.parametrize("damage", ["html", "truncated", "empty", "array"])
def test_broken_json_file_is_refused(hf_model: Path, name: str, damage: str) -> None:
    path = hf_model / name
    text = json.dumps({"model_type": "mistral", "vocab": list(range(50))})
    path.write_text(
        {"html": HTML, "truncated": text[: len(text) // 2], "empty": "", "array": "[1, 2]"}[damage]
    )
    with pytest.raises(InvalidModel, match=name.replace(".", r"\.")) as caught:
        check_model(hf_model, rels(hf_model))
    assert caught.value.exit_code == 4
    if damage == "html":
        assert "HTML" in str(caught.value)
    check_model(hf_model, rels(hf_model), skip={"json"})


def test_valid_model_passes_every_family(hf_model: Path) -> None:
    write_gguf(hf_model / "gguf" / "m.gguf", split_max_tensors=3)
    (hf_model / "preprocessor_config.json").write_text("{}")
    check_model(hf_model, rels(hf_model))


def test_large_json_file_gets_the_cheap_check(
    hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "MAX_PARSED_JSON", 64)
    path = hf_model / "tokenizer.json"
    path.write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(100)}}}))
    check_model(hf_model, rels(hf_model))
    path.write_text(path.read_text()[:-10])
    with pytest.raises(InvalidModel, match=re.escape("tokenizer.json: does not start with")):
        check_model(hf_model, rels(hf_model))


def pytorch_model(root: Path, shards: list[str], present: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    weight_map = {f"layer.{i}.weight": shard for i, shard in enumerate(shards)}
    doc = {"metadata": {"total_size": 8}, "weight_map": weight_map}
    (root / "pytorch_model.bin.index.json").write_text(json.dumps(doc))
    for shard in present:
        (root / shard).write_bytes(b"PK\x03\x04 not read")


def test_pytorch_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    pytorch_model(tmp_path, shards, shards[:1])
    with pytest.raises(
        InvalidModel, match=re.escape("names shard pytorch_model-00002-of-00002.bin which")
    ):
        check_model(tmp_path, rels(tmp_path))
    check_model(tmp_path, rels(tmp_path), skip={"index"})
    (tmp_path / shards[1]).write_bytes(b"PK")
    check_model(tmp_path, rels(tmp_path))


def test_index_with_an_unsafe_shard_path_is_refused(tmp_path: Path) -> None:
    pytorch_model(tmp_path, ["../../etc/passwd"], [])
    with pytest.raises(InvalidModel, match="unsafe shard path"):
        check_file(tmp_path / "pytorch_model.bin.index.json", "pytorch_model.bin.index.json")


def test_other_index_needs_a_weight_map_only_if_it_has_one(tmp_path: Path) -> None:
    (tmp_path / "adapter.index.json").write_text('{"note": "no map"}')
    check_model(tmp_path, rels(tmp_path))
    (tmp_path / "adapter.index.json").write_text('{"weight_map": {"w": "absent.bin"}}')
    with pytest.raises(InvalidModel, match=re.escape("absent.bin which is missing")):
        check_model(tmp_path, rels(tmp_path))
    (tmp_path / "adapter.index.json").write_text(HTML)
    with pytest.raises(InvalidModel, match="HTML"):
        check_file(tmp_path / "adapter.index.json", "adapter.index.json")


def test_index_of_a_gguf_or_pickle_shard_does_not_need_safetensors(tmp_path: Path) -> None:
    pytorch_model(tmp_path, ["a.bin"], ["a.bin"])
    check_model(tmp_path, rels(tmp_path), skip={"safetensors"})


def test_gguf_is_checked_by_check_file_and_check_model(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_text(HTML)
    with pytest.raises(InvalidModel, match=re.escape("m.gguf: not a GGUF file")):
        check_file(tmp_path / "m.gguf", "m.gguf")
    with pytest.raises(InvalidModel, match=re.escape("m.gguf: not a GGUF file")):
        check_model(tmp_path, ["m.gguf"])
    check_file(tmp_path / "m.gguf", "m.gguf", skip={"gguf"})
    check_model(tmp_path, ["m.gguf"], skip={"gguf"})


def test_safetensors_can_be_skipped_too(hf_model: Path) -> None:
    shard = hf_model / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(InvalidModel, match="truncated"):
        check_model(hf_model, rels(hf_model))
    check_model(hf_model, rels(hf_model), skip={"safetensors"})


# --- FETCH_SKIP_FORMAT_CHECKS ----------------------------------------------------------------

ENV = {"MINIO_BUCKET": "llm-models", "MODEL_PREFIX": "m/v1/", "MODEL_CACHE_DIR": "/model-cache"}


@pytest.mark.parametrize(
    ("text", "families"),
    [("gguf,json", {"gguf", "json"}), (" GGUF , ", {"gguf"}), ("all", set(FAMILIES)),
     ("index,all", set(FAMILIES))],
)  # fmt: skip
def test_skip_format_checks_from_the_environment(text: str, families: set[str]) -> None:
    assert parse_families(text) == families
    cfg = load([], {**ENV, "FETCH_SKIP_FORMAT_CHECKS": text})
    assert cfg.skip_format_checks == families


def test_skip_format_checks_default_and_flag() -> None:
    assert load([], ENV).skip_format_checks == frozenset()
    cfg = load(["--skip-format-checks", "json"], {**ENV, "FETCH_SKIP_FORMAT_CHECKS": "gguf"})
    assert cfg.skip_format_checks == {"json"}
    verify = load(["verify", "/model-cache", "--skip-format-checks", "gguf"], {})
    assert verify.skip_format_checks == {"gguf"}


def test_unknown_family_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load([], {**ENV, "FETCH_SKIP_FORMAT_CHECKS": "gguf,pickle"})
    (problem,) = caught.value.problems
    assert problem.startswith("FETCH_SKIP_FORMAT_CHECKS: expected a comma-separated list")
    assert "'gguf,pickle'" in problem


def test_pytorch_index_left_without_its_shards_beside_safetensors_is_not_refused(
    hf_model: Path,
) -> None:
    """Hugging Face repos ship both formats; FETCH_EXCLUDE=*.bin keeps the .bin index only."""
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    pytorch_model(hf_model, shards, [])
    check_model(hf_model, rels(hf_model))
    (hf_model / shards[0]).write_bytes(b"PK")  # one of two present: a broken download
    with pytest.raises(InvalidModel, match=re.escape(f"names shard {shards[1]} which is missing")):
        check_model(hf_model, rels(hf_model))
    for p in hf_model.glob("*.safetensors*"):
        p.unlink()
    (hf_model / shards[0]).unlink()  # no safetensors: the .bin index is what a loader reads
    with pytest.raises(InvalidModel, match="which is missing"):
        check_model(hf_model, rels(hf_model))
