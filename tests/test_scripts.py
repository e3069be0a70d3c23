"""scripts/test and scripts/demo: what they run, and that they install only when needed.

Each test copies the scripts with pyproject.toml and setup.py into a temporary tree whose
``.venv`` holds stand-ins for python, ruff, mypy and marsconn that log their arguments, so
the scripts' decisions are seen without installing or testing anything for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = """#!/bin/sh
if [ "$1" = "-c" ]; then echo "3.11.7 (stand-in)"; exit 0; fi
echo "$(basename "$0") $*" >> "{log}"
"""


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "calls.log"

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = {k: v for k, v in os.environ.items() if k not in ("VENV", "MARSCONN_REINSTALL")}
        return subprocess.run(
            ["bash", str(self.root / "scripts" / script), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env | {"PYTHON": sys.executable},
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "ruff", "mypy", "marsconn"):
        tool = bin_dir / name
        tool.write_text(STAND_IN.format(log=tmp_path / "calls.log"))
        tool.chmod(0o755)
    return Tree(tmp_path)


PIP_TEST = "python -m pip install --quiet --disable-pip-version-check -e .[test]"
PIP_PLAIN = "python -m pip install --quiet --disable-pip-version-check -e ."


def test_selected_tests_run_without_coverage_or_lints(tree: Tree) -> None:
    proc = tree.run("test", "-k", "failover")
    assert proc.returncode == 0, proc.stderr
    assert tree.calls() == [PIP_TEST, "python -m pytest -k failover"]


def test_the_full_run_has_every_check_and_the_coverage_gate(tree: Tree) -> None:
    proc = tree.run("test")
    assert proc.returncode == 0, proc.stderr
    assert tree.calls() == [
        PIP_TEST,
        "ruff check marsconn tests benchmarks",
        "ruff format --check marsconn tests benchmarks",
        "mypy --strict marsconn",
        "python -m pytest --cov=marsconn --cov-branch --cov-report=term-missing",
    ]


def test_install_is_skipped_until_pyproject_changes(tree: Tree) -> None:
    assert tree.run("test", "tests/test_plan.py").returncode == 0
    proc = tree.run("test", "tests/test_plan.py")
    assert tree.calls() == ["python -m pytest tests/test_plan.py"]
    assert "is installed in .venv and up to date" in proc.stderr
    # An install with [test] stands for the demo's plain one too.
    assert tree.run("demo", "--mode", "pipe").returncode == 0
    assert tree.calls() == ["marsconn demo --mode pipe"]

    pyproject = tree.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    tree.run("demo")
    assert tree.calls() == [PIP_PLAIN, "marsconn demo"]
    tree.run("test", "-x")
    assert tree.calls() == [PIP_TEST, "python -m pytest -x"]

    proc = subprocess.run(
        ["bash", str(tree.root / "scripts" / "test"), "-x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHON": sys.executable, "MARSCONN_REINSTALL": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert tree.calls()[-2:] == [PIP_TEST, "python -m pytest -x"]


def test_a_missing_venv_is_created(tree: Tree) -> None:
    shutil.rmtree(tree.root / ".venv")
    # A stand-in for the system interpreter: `-m venv DIR` makes DIR/bin/python a stand-in.
    system = tree.root / "system-python"
    system.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && '
        f'cp "{tree.root}/python-stand-in" "$3/bin/python" && echo "venv $3" >> "{tree.log}"; '
        f'else exec "{sys.executable}" "$@"; fi\n'
    )
    (tree.root / "python-stand-in").write_text(STAND_IN.format(log=tree.log))
    for path in (system, tree.root / "python-stand-in"):
        path.chmod(0o755)
    tree.log.write_text("")
    proc = subprocess.run(
        ["bash", str(tree.root / "scripts" / "test"), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHON": str(system)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "creating .venv" in proc.stderr
    assert tree.calls() == ["venv .venv", PIP_TEST, "python -m pytest -q"]


def test_an_old_python_is_refused(tree: Tree, tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "Python 3.9.2"; fi\nexit 1\n')
    old.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(tree.root / "scripts" / "test")],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHON": str(old)},
    )
    assert proc.returncode == 1
    assert proc.stderr == f"marsconn needs Python >= 3.11; {old} is Python 3.9.2\n"
