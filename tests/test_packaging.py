"""The package metadata, and what the sdist and the wheel carry.

The sdist must hold everything its own test suite needs; the wheel carries the
documentation and the example configuration inside the package, where
``marsconn docs`` and ``marsconn example-config`` find them once installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Not copied into the build tree: large, machine-local or generated.
SKIP = shutil.ignore_patterns(
    ".venv", ".git", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    "__pycache__", "build", "dist", "*.egg-info", ".coverage*",
)  # fmt: skip


def test_license_is_apache_2_in_spdx_form_with_its_text() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    # With an SPDX expression, license classifiers are refused by the build tools.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]


def test_metadata_names_authors_urls_and_classifiers() -> None:
    project = PYPROJECT["project"]
    assert project["authors"]
    assert set(project["urls"]) >= {"Homepage", "Documentation", "Repository", "Issues"}
    assert "Programming Language :: Python :: 3 :: Only" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    requires = PYPROJECT["build-system"]["requires"]
    assert requires == ["setuptools>=77"]  # the first to read `license` as SPDX


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel, built from a copy of this tree without build isolation."""
    pytest.importorskip("build", reason="the [test] extra's `build` is not installed")
    tree = tmp_path_factory.mktemp("tree") / "marsconn"
    shutil.copytree(ROOT, tree, ignore=SKIP)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return sdist, wheel


def test_sdist_has_what_its_tests_need(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for path in ROOT.glob("tests/**/*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert str(path.relative_to(ROOT)) in names
    for name in (
        "LICENSE",
        "README.md",
        "setup.py",
        "tests/conftest.py",
        "tests/testing/__init__.py",
        "tests/real/conftest.py",
        "tests/data/plan-format1.json",
        "docs/cli.md",
        "config/cads-mars-server.yaml",
        "config/servers.list",
        "config/shares.env",
        "scripts/_venv.sh",
    ):
        assert name in names, name
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_carries_docs_examples_and_license(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for doc in (ROOT / "docs").glob("*.md"):
            assert whl.read(f"marsconn/_docs/{doc.name}") == doc.read_bytes()
        for example in (ROOT / "config").iterdir():
            assert whl.read(f"marsconn/_examples/{example.name}") == example.read_bytes()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = whl.read(metadata).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in text
    assert "marsconn/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]
