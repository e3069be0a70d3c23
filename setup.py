"""Build hook: ship the documentation and the example configuration inside the package.

Everything else is in pyproject.toml. The source tree keeps one copy of each
(``docs/`` and ``config/``); building a wheel copies them into the package as
``marsconn/_docs`` and ``marsconn/_examples``, where ``marsconn docs`` and
``marsconn example-config`` find them after an install. From a source tree
(an editable install) those commands read ``docs/`` and ``config/`` directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: source directory -> (directory inside the package, files shipped)
SHIPPED = {"docs": ("_docs", "*.md"), "config": ("_examples", "*")}


class BuildPyWithData(build_py):
    """``build_py`` that also copies the shipped directories into the built package."""

    def run(self) -> None:
        super().run()
        for source, (target, pattern) in SHIPPED.items():
            files = sorted(p for p in (ROOT / source).glob(pattern) if p.is_file())
            if not files:
                raise SystemExit(f"{ROOT / source}: nothing to ship as marsconn/{target}")
            dest = Path(self.build_lib, "marsconn", target)
            dest.mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copyfile(path, dest / path.name)


setup(cmdclass={"build_py": BuildPyWithData})
