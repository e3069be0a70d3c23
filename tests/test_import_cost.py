"""What a first plan loads: only what it uses (import cost is measured in benchmarks/).

A fresh interpreter imports marsconn and resolves one plan; the modules it then has
loaded must not include those that only other paths need, so that the import cost stays
within its budget (benchmarks/bench_import.py, docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROGRAM = """
import json, sys
import marsconn
from marsconn.core.audit import NullAuditLogger
marsconn.resolve_plan({CONFIG}, env={ENV}, config_file="{YAML}", logger=NullAuditLogger(){EXTRA})
print(json.dumps(sorted(sys.modules)))
"""

#: Loaded only by the paths that need them.
NOT_FOR_A_PIPE_PLAN = (
    "marsconn.core._job_events",  # the executor's audit events
    "marsconn.plan.capability",  # the version check, only when shares is requested
    "packaging.version",
    "difflib",  # "did you mean", only for near-miss names
    "structlog",  # the default audit logger; a NullAuditLogger was given
    "marsconn.run.engine",
    "websockets",
)


def loaded(tmp_path: object, config: str, env: str, extra: str = "") -> set[str]:
    yaml_file = os.path.join(str(tmp_path), "empty.yaml")
    with open(yaml_file, "w") as fh:
        fh.write("{}\n")
    code = PROGRAM.format(CONFIG=config, ENV=env, YAML=yaml_file, EXTRA=extra)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout))


def test_a_pipe_plan_loads_nothing_it_does_not_use(tmp_path: object) -> None:
    modules = loaded(tmp_path, "{'mars_servers': 'http://mars-1:9000'}", "{}")
    assert "marsconn.plan.model" in modules
    assert not [name for name in NOT_FOR_A_PIPE_PLAN if name in modules]


@pytest.mark.parametrize("extra", ["", ", server_version='0.3.1'"])
def test_a_shares_plan_loads_the_version_check(tmp_path: object, extra: str) -> None:
    modules = loaded(
        tmp_path, "{'mars_servers': 'http://mars-1:9000'}", "{'MARS_USE_SHARES': 'true'}", extra
    )
    assert {"marsconn.plan.capability", "packaging.version"} <= modules
    assert "marsconn.core._job_events" not in modules


def test_the_executor_events_load_on_first_use() -> None:
    code = (
        "import sys; from marsconn.core import audit; assert 'marsconn.core._job_events' not in "
        "sys.modules; from marsconn.core.audit import AttemptStarted, EVENTS; "
        "print(AttemptStarted.EVENT, len(EVENTS))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == ["marsconn.attempt.started", "9"]


def test_unknown_audit_names_still_raise() -> None:
    from marsconn.core import audit

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchEvent'"):
        audit.NoSuchEvent  # noqa: B018
