"""The images of container/: what `docker build` would produce, checked without an engine.

`make k8s-check` lints both Dockerfiles with hadolint and checkov; these tests assert the
contract of issue 6 and that the image's wheel needs nothing dev-only at run time.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .manifests import CONTAINER, ROOT, Dockerfile

FETCHER = Dockerfile.read(CONTAINER / "Dockerfile")
RUNTIME = Dockerfile.read(CONTAINER / "vllm-runtime.Dockerfile")
OCI = ("title", "description", "version", "revision", "licenses", "base.name")


def copy_sources(dockerfile: Dockerfile) -> set[str]:
    """What the build stage copies from the context (not --from=another stage)."""
    sources = set()
    for rest in dockerfile.all("COPY"):
        words = rest.split()
        if not any(w.startswith("--from=") for w in words):
            sources.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    return sources


@pytest.mark.parametrize("dockerfile", [FETCHER, RUNTIME], ids=lambda d: d.path.name)
def test_multi_stage_non_root_with_oci_labels(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.all("FROM")) >= 2, "multi-stage: the build stage stays behind"
    final = dockerfile.final_stage()
    # Numeric, so the kubelet can check runAsNonRoot without /etc/passwd.
    assert final.all("USER") == ["1000:1000"]
    assert not final.all("HEALTHCHECK"), "Kubernetes probes instead"
    labels = " ".join(final.all("LABEL"))
    for key in OCI:
        assert f"org.opencontainers.image.{key}=" in labels, key
    # The final stage takes only the built venv, never the source tree.
    assert not copy_sources(final)
    for image in dockerfile.all("FROM"):
        name = image.split()[0]
        assert ":" in name and not name.endswith(":latest"), name


def test_fetcher_image_contract() -> None:
    assert FETCHER.all("FROM")[-1].startswith("python:3.12-slim")
    assert FETCHER.exec_form("ENTRYPOINT") == ["model-fetcher"]
    # KServe appends `SRC_URI DEST` to the entrypoint: a CMD would sit between them.
    assert not FETCHER.final_stage().all("CMD")


def test_vllm_runtime_image_execs_vllm_serve() -> None:
    assert RUNTIME.all("FROM")[-1].startswith("vllm/vllm-openai:v")
    shell, flag, script, name = RUNTIME.exec_form("ENTRYPOINT")
    assert (shell, flag) == ("/bin/sh", "-c") and name
    # exec twice: sh becomes model-fetcher, which becomes vLLM (the signals' recipient).
    assert script.startswith("exec model-fetcher fetch -- vllm serve ")
    assert script.endswith('"$@"')
    assert RUNTIME.exec_form("CMD") == []


@pytest.mark.parametrize("dockerfile", [FETCHER, RUNTIME], ids=lambda d: d.path.name)
def test_context_is_only_what_the_wheel_needs(dockerfile: Dockerfile) -> None:
    assert copy_sources(dockerfile) == {"pyproject.toml", "README.m[d]", "fetcher"}
    ignore = Path(f"{dockerfile.path}.dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in ignore if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "exclude everything, then re-include"
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "fetcher"} <= included
    for dev_only in (".venv", "devtools", "bench", "tests", ".git", "build"):
        assert not any(fnmatch.fnmatch(dev_only, pattern) for pattern in included), dev_only


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the build stage makes, from a context holding only what it copies."""
    context = tmp_path_factory.mktemp("context")
    (context / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    for src in (ROOT / "fetcher").rglob("*.py"):
        dest = context / src.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    out = tmp_path_factory.mktemp("wheels")
    # With build isolation, as in the image: pip fetches the build backend pyproject names.
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    proc = subprocess.run([*cmd, "-w", str(out), str(context)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = out.glob("model_fetcher-*.whl")
    return found


def test_wheel_holds_the_package_and_its_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"fetcher"}, "devtools, bench and tests stay out of the image"
    assert "fetcher/cli.py" in names
    assert re.search(r"^model-fetcher = fetcher\.cli:main$", scripts, re.M)


def imported_modules(package: Path) -> set[str]:
    found = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def runtime_distributions() -> set[str]:
    """The project's runtime dependencies and everything they pull in (not the extras)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo.extend(Requirement(r) for r in metadata.requires(name) or [])
    return seen


def test_runtime_code_imports_only_runtime_dependencies() -> None:
    """The image installs [project.dependencies] only: no boto3, safetensors, devtools."""
    allowed = runtime_distributions()
    provided = metadata.packages_distributions()
    for module in sorted(imported_modules(ROOT / "fetcher") - {"fetcher"}):
        if module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {d.lower().replace("_", "-") for d in provided.get(module, [])}
        assert dists & allowed, f"fetcher imports {module} ({dists or 'not installed'}), " + (
            "which the image does not install: add it to [project.dependencies]"
        )


def test_console_script_runs_without_dev_packages(tmp_path: Path) -> None:
    """`model-fetcher --help` with devtools and bench unimportable, as in the image."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('devtools', 'bench', 'boto3', 'safetensors', 'numpy'):\n"
        "            raise ImportError(f'{name} is not in the image')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    script = Path(sys.executable).parent / "model-fetcher"
    proc = subprocess.run([str(script), "--help"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sidecar" in proc.stdout
    probe = [sys.executable, "-c", "import devtools"]
    assert subprocess.run(probe, env=env, capture_output=True).returncode != 0, "blocker works"
    json.dumps(proc.stdout)  # printable
